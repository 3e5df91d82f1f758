//! Scheduler tests on virtual time (plain ns).

use std::collections::BTreeMap;

use super::*;

const SEC: u64 = 1_000_000_000;
const GIB: u64 = 1 << 30;
const DELAY: u64 = 10 * SEC;

fn sched() -> Scheduler {
    Scheduler::new(SchedConfig { delay_ns: DELAY, max_work_per_tick: 10_000 })
}

fn m(name: &str, gib: u64, labels: &[&str]) -> Machine {
    Machine::new(name, gib * GIB, labels.iter().copied())
}

fn dead(mut machine: Machine) -> Machine {
    machine.alive = false;
    machine
}

fn spec(gib: u64, labels: &[&str]) -> Spec {
    Spec::new(gib * GIB, labels.iter().copied())
}

fn node(s: &Scheduler, id: u64) -> Option<&str> {
    s.get(id).and_then(|v| v.node.as_deref())
}

fn state(s: &Scheduler, id: u64) -> VolumeState {
    s.get(id).map(|v| v.state).unwrap()
}

/// Every volume with a node is listed under exactly that node, and the promised space of each
/// machine is the sum of its volumes' promises.
fn check_invariants(s: &Scheduler, machines: &[&str]) {
    let mut seen = BTreeMap::new();
    for name in machines {
        let mut promised = 0;
        for id in s.volumes_on(name) {
            assert!(seen.insert(id, *name).is_none(), "volume {id} listed on two machines");
            let v = s.get(id).unwrap();
            assert_eq!(v.node.as_deref(), Some(*name));
            promised += match v.state {
                VolumeState::Scheduling | VolumeState::Cloning => v.requested.reserved_size,
                VolumeState::Resizing => {
                    v.requested.reserved_size.saturating_sub(v.actual.as_ref().map_or(0, |a| a.reserved_size))
                }
                _ => 0,
            };
        }
        assert_eq!(s.promised(name), promised, "promised on {name}");
    }
    for v in s.list(None) {
        if let Some(n) = &v.node {
            assert_eq!(seen.get(&v.id).copied(), Some(n.as_str()), "volume {} not indexed", v.id);
        }
    }
}

// ---- transitions ----

/// The states a volume can be brought into on machine `m1` for the transition table.
#[derive(Clone, Copy, Debug)]
enum Setup {
    Unplaced,
    Placed,
    Ready,
    Patched,
    UnplacedClone,
    Resizing,
    Cloning,
    Deleting,
    Error,
}

/// A scheduler with volume 1 (or a clone of it, returned) in the `setup` state on `m1`.
fn setup(what: Setup) -> (Scheduler, u64, Vec<Machine>) {
    let machines = vec![m("m1", 100, &["ssd"])];
    let mut s = sched();
    s.create("v", spec(10, &[]), None, 0).unwrap();
    let mut id = 1;
    if !matches!(what, Setup::Unplaced) {
        s.tick(0, &machines, true);
    }
    let ready = |s: &mut Scheduler| s.report(1, "m1", Report::Ready, 1).unwrap();
    match what {
        Setup::Unplaced | Setup::Placed => {}
        Setup::Ready => {
            ready(&mut s);
        }
        Setup::Patched => {
            ready(&mut s);
            s.patch(1, spec(20, &[]), 2).unwrap();
        }
        Setup::UnplacedClone => {
            ready(&mut s);
            id = s.create("c", spec(10, &[]), Some(1), 2).unwrap().id;
        }
        Setup::Resizing => {
            ready(&mut s);
            s.patch(1, spec(20, &[]), 2).unwrap();
            s.tick(3, &machines, true);
        }
        Setup::Cloning => {
            ready(&mut s);
            id = s.create("c", spec(10, &[]), Some(1), 2).unwrap().id;
            s.tick(3, &machines, true);
        }
        Setup::Deleting => {
            ready(&mut s);
            s.delete(1, 2).unwrap();
        }
        Setup::Error => {
            s.report(1, "m1", Report::Failed { message: "disk".into(), give_up: true }, 2).unwrap();
        }
    }
    s.take_dirty();
    (s, id, machines)
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Patch,
    Delete,
    Ready,
    Resized,
    Removed,
    Failed,
}

fn apply(s: &mut Scheduler, id: u64, op: Op) -> Result<Volume, SchedError> {
    let fail = Report::Failed { message: "boom".into(), give_up: false };
    match op {
        Op::Patch => s.patch(id, spec(30, &[]), 10),
        Op::Delete => s.delete(id, 10),
        Op::Ready => s.report(id, "m1", Report::Ready, 10),
        Op::Resized => s.report(id, "m1", Report::Resized, 10),
        Op::Removed => s.report(id, "m1", Report::Removed, 10),
        Op::Failed => s.report(id, "m1", fail, 10),
    }
}

#[test]
fn transition_table() {
    use Setup as St;
    use VolumeState as V;
    // Expected outcome: Ok(Some(state)) = the volume is now in `state`; Ok(None) = its record is
    // gone; Err(name) = that error.
    type Want = Result<Option<V>, &'static str>;
    const ILL: Want = Err("illegal");
    const OWN: Want = Err("not owner");
    let table: &[(Setup, V, [Want; 6])] = &[
        // setup, its state, [patch, delete, ready, resized, removed, failed]
        (St::Unplaced, V::Scheduling, [ILL, Ok(None), OWN, OWN, OWN, OWN]),
        (
            St::Placed,
            V::Scheduling,
            [ILL, Ok(Some(V::Deleting)), Ok(Some(V::Ready)), ILL, ILL, Ok(Some(V::Scheduling))],
        ),
        (St::Ready, V::Ready, [Ok(Some(V::Pending)), Ok(Some(V::Deleting)), ILL, ILL, ILL, ILL]),
        (St::Patched, V::Pending, [ILL, ILL, ILL, ILL, ILL, ILL]),
        (St::UnplacedClone, V::Pending, [ILL, Ok(None), OWN, OWN, OWN, OWN]),
        (St::Resizing, V::Resizing, [ILL, ILL, ILL, Ok(Some(V::Pending)), ILL, Ok(Some(V::Resizing))]),
        (St::Cloning, V::Cloning, [ILL, ILL, Ok(Some(V::Ready)), ILL, ILL, Ok(Some(V::Cloning))]),
        (St::Deleting, V::Deleting, [ILL, ILL, ILL, ILL, Ok(None), Ok(Some(V::Deleting))]),
        (St::Error, V::Error, [ILL, Ok(Some(V::Deleting)), ILL, ILL, ILL, ILL]),
    ];
    let ops = [Op::Patch, Op::Delete, Op::Ready, Op::Resized, Op::Removed, Op::Failed];
    for (what, from, wants) in table {
        for (op, want) in ops.iter().zip(wants) {
            let (mut s, id, machines) = setup(*what);
            assert_eq!(state(&s, id), *from, "{what:?}");
            let before = s.get(id).cloned();
            let got = apply(&mut s, id, *op);
            let ctx = format!("{what:?} ({from}) + {op:?}");
            match (want, &got) {
                (Ok(Some(to)), Ok(v)) => {
                    assert_eq!(v.state, *to, "{ctx}");
                    assert_eq!(state(&s, id), *to, "{ctx}");
                    assert_eq!(s.take_dirty().changed, [id], "{ctx}");
                }
                (Ok(None), Ok(_)) => {
                    assert!(s.get(id).is_none(), "{ctx}");
                    assert_eq!(s.take_dirty().removed, [id], "{ctx}");
                }
                (Err("illegal"), Err(SchedError::IllegalTransition { id: i, from: f, .. })) => {
                    assert_eq!((*i, *f), (id, *from), "{ctx}");
                    assert_eq!(s.get(id).cloned(), before, "{ctx}: refused operations change nothing");
                    assert!(s.take_dirty().is_empty(), "{ctx}");
                }
                (Err("not owner"), Err(SchedError::NotOwner { .. })) => {
                    assert_eq!(s.get(id).cloned(), before, "{ctx}");
                }
                _ => panic!("{ctx}: want {want:?}, got {got:?}"),
            }
            check_invariants(&s, &["m1"]);
            // Whatever happened, the executor keeps the indexes consistent.
            s.tick(20, &machines, true);
            check_invariants(&s, &["m1"]);
        }
    }
}

#[test]
fn report_effects() {
    // scheduling → ready: actual = requested, error_count reset.
    let (mut s, id, _) = setup(Setup::Placed);
    s.report(id, "m1", Report::Failed { message: "mkfs".into(), give_up: false }, 5).unwrap();
    let v = s.get(id).unwrap();
    assert_eq!((v.error_count, v.error.as_str()), (1, "mkfs"));
    let v = s.report(id, "m1", Report::Ready, 6).unwrap();
    assert_eq!((v.actual.as_ref(), v.error_count, v.error.as_str()), (Some(&v.requested), 0, ""));
    // A report from another machine is refused.
    let err = s.report(id, "m2", Report::Ready, 7).unwrap_err();
    assert_eq!(err, SchedError::NotOwner { id, node: Some("m1".into()), machine: "m2".into() });
    assert_eq!(err.http_status(), 409);
    assert!(matches!(s.report(99, "m1", Report::Ready, 7), Err(SchedError::NotFound { id: 99 })));
}

#[test]
fn resize_round_trip() {
    let (mut s, id, machines) = setup(Setup::Ready);
    s.patch(id, spec(30, &[]), 10).unwrap();
    assert_eq!(s.tick(11, &machines, true).advanced, 1);
    assert_eq!(state(&s, id), VolumeState::Resizing);
    assert_eq!(s.promised("m1"), 20 * GIB, "the growth is promised");
    let v = s.report(id, "m1", Report::Resized, 12).unwrap();
    assert_eq!((v.state, v.actual.as_ref()), (VolumeState::Pending, Some(&spec(30, &[]))));
    assert_eq!(s.promised("m1"), 0);
    s.tick(13, &machines, true);
    assert_eq!(state(&s, id), VolumeState::Ready);
}

#[test]
fn constraints_only_change_is_accepted_in_place_or_goes_to_error() {
    let (mut s, id, machines) = setup(Setup::Ready);
    // m1 carries "ssd": accepted in place.
    s.patch(id, spec(10, &["ssd"]), 10).unwrap();
    s.tick(11, &machines, true);
    let v = s.get(id).unwrap();
    assert_eq!((v.state, v.node.as_deref()), (VolumeState::Ready, Some("m1")));
    assert_eq!(v.actual.as_ref(), Some(&spec(10, &["ssd"])));
    // m1 lacks "gpu": error, as in the original.
    s.patch(id, spec(20, &["gpu", "ssd"]), 12).unwrap();
    s.tick(13, &machines, true);
    let v = s.get(id).unwrap();
    assert_eq!(v.state, VolumeState::Error);
    assert!(v.error.contains("lacks labels [gpu]"), "{}", v.error);
}

#[test]
fn clone_is_made_on_the_parents_node_with_at_most_its_free_space() {
    let mut machines = vec![m("a", 100, &[]), m("b", 50, &[])];
    let mut s = sched();
    s.create("parent", spec(10, &[]), None, 0).unwrap();
    s.tick(0, &machines, true);
    assert_eq!(node(&s, 1), Some("a"));
    s.report(1, "a", Report::Ready, 1).unwrap();
    machines[0].available = 4 * GIB; // a filled up meanwhile
    let c = s.create("clone", spec(10, &[]), Some(1), 2).unwrap();
    assert_eq!((c.state, c.parent_id), (VolumeState::Pending, Some(1)));
    assert!(matches!(s.delete(1, 3), Err(SchedError::ClonesPending { id: 1, ref clones }) if clones == &[2]));
    s.tick(3, &machines, true);
    let v = s.get(2).unwrap();
    assert_eq!((v.state, v.node.as_deref()), (VolumeState::Cloning, Some("a")));
    let v = s.report(2, "a", Report::Ready, 4).unwrap();
    assert_eq!((v.state, v.parent_id), (VolumeState::Ready, None));
    assert_eq!(v.actual.map(|a| a.reserved_size), Some(4 * GIB));
    assert!(s.delete(1, 5).is_ok(), "no pending clone left");
}

#[test]
fn create_and_patch_refusals() {
    let (mut s, _, machines) = setup(Setup::Placed);
    assert_eq!(s.create("c", spec(1, &[]), Some(9), 1).unwrap_err(), SchedError::ParentNotFound { parent: 9 });
    assert_eq!(
        s.create("c", spec(1, &[]), Some(1), 1).unwrap_err(),
        SchedError::ParentUnusable { parent: 1, state: VolumeState::Scheduling }
    );
    assert!(matches!(s.create("c", spec(1, &[""]), None, 1), Err(SchedError::InvalidSpec { .. })));
    s.report(1, "m1", Report::Ready, 1).unwrap();
    s.patch(1, spec(20, &["b", "a"]), 2).unwrap();
    s.tick(3, &machines, true);
    assert_eq!(state(&s, 1), VolumeState::Error, "m1 lacks a and b");
    let (mut s, _, _) = setup(Setup::Ready);
    s.patch(1, spec(10, &["x", "y"]), 2).unwrap();
    s.tick(3, &[m("m1", 100, &["x", "y"])], true);
    assert_eq!(state(&s, 1), VolumeState::Ready);
    assert_eq!(s.patch(1, spec(10, &["y", "x", "x"]), 4).unwrap_err(), SchedError::NotModified { id: 1 });
    assert_eq!(s.patch(7, spec(1, &[]), 4).unwrap_err().http_status(), 404);
    assert_eq!(
        s.create("c", spec(1, &[]), Some(1), 5).map(|v| v.parent_id),
        Ok(Some(1)),
        "a ready parent can be cloned"
    );
}

#[test]
fn clone_of_a_vanished_parent_is_dropped() {
    let mut s = sched();
    let orphan = Volume {
        id: 5,
        name: "orphan".into(),
        requested: spec(1, &[]),
        actual: None,
        state: VolumeState::Pending,
        node: None,
        parent_id: Some(4),
        error: String::new(),
        error_count: 0,
        created_ns: 0,
        updated_ns: 0,
        waiting_reason: None,
    };
    s.restore([orphan]).unwrap();
    assert_eq!(s.next_id(), 6);
    s.tick(1, &[m("a", 10, &[])], true);
    assert!(s.get(5).is_none());
    assert_eq!(s.take_dirty(), Dirty { changed: vec![], removed: vec![5] });
}

// ---- placement ----

#[test]
fn placement_honours_constraints_and_breaks_ties_by_name() {
    let machines = [m("c", 200, &[]), m("b", 100, &["ssd"]), m("a", 100, &["ssd", "x"]), m("d", 300, &["hdd"])];
    let mut s = sched();
    s.create("ssd", spec(10, &["ssd"]), None, 0).unwrap();
    s.create("any", spec(10, &[]), None, 0).unwrap();
    s.create("ssd+x", spec(10, &["x", "ssd"]), None, 0).unwrap();
    s.create("hdd", spec(10, &["hdd"]), None, 0).unwrap();
    let rep = s.tick(1, &machines, true);
    assert_eq!(rep.placed, 4);
    assert_eq!(node(&s, 1), Some("a"), "tie between a and b → lowest name");
    assert_eq!(node(&s, 2), Some("d"), "largest free space");
    assert_eq!(node(&s, 3), Some("a"), "only a carries x");
    assert_eq!(node(&s, 4), Some("d"));
    // The next ssd volume sees a with 20 GiB promised: b wins.
    s.create("ssd2", spec(10, &["ssd"]), None, 2).unwrap();
    s.tick(3, &machines, true);
    assert_eq!(node(&s, 5), Some("b"));
    check_invariants(&s, &["a", "b", "c", "d"]);
}

#[test]
fn promised_space_is_counted_and_released() {
    let machines = [m("m100", 100, &[]), m("m70", 70, &[])];
    let mut s = sched();
    s.create("one", spec(60, &[]), None, 0).unwrap();
    s.create("two", spec(60, &[]), None, 0).unwrap();
    s.tick(1, &machines, true);
    assert_eq!(node(&s, 1), Some("m100"));
    assert_eq!(node(&s, 2), Some("m70"), "100 − 60 promised = 40 < 60");
    assert_eq!((s.promised("m100"), s.promised("m70")), (60 * GIB, 60 * GIB));
    assert_eq!(s.effective_free("m100"), Some(40 * GIB));
    // Deletion releases the promise: a third 60 GiB volume fits on m100 again.
    s.delete(1, 2).unwrap();
    assert_eq!(s.promised("m100"), 0);
    s.create("three", spec(60, &[]), None, 3).unwrap();
    s.tick(4, &machines, true);
    assert_eq!(node(&s, 3), Some("m100"));
    // A node's report releases it too (its `available` now carries the volume).
    s.report(3, "m100", Report::Ready, 5).unwrap();
    assert_eq!(s.promised("m100"), 0);
    // Moving off a dead machine releases it on the old node.
    let moved = [m("m100", 100, &[]), dead(m("m70", 70, &[]))];
    s.tick(6, &moved, true);
    assert_eq!(s.promised("m70"), 0);
    assert_eq!(node(&s, 2), Some("m100"));
    assert_eq!(s.promised("m100"), 60 * GIB);
    check_invariants(&s, &["m100", "m70"]);
}

#[test]
fn unplaceable_volume_waits_with_a_reason_and_is_retried() {
    let mut s = sched();
    s.create("big", spec(80, &["ssd"]), None, 0).unwrap();
    let why = |s: &Scheduler| s.get(1).unwrap().waiting_reason.clone();

    let rep = s.tick(1, &[], true);
    assert_eq!((rep.placed, rep.unplaceable), (0, 1));
    assert_eq!(why(&s).as_deref(), Some("no alive machine"));
    assert_eq!(state(&s, 1), VolumeState::Scheduling);

    s.tick(2, &[m("a", 100, &["hdd"])], true);
    assert_eq!(why(&s).as_deref(), Some("no alive machine carries labels [ssd]"));

    let small = [m("a", 100, &["hdd"]), m("b", 50, &["ssd"])];
    s.tick(3, &small, true);
    assert_eq!(why(&s), Some(format!("largest free space {} < requested {}", 50 * GIB, 80 * GIB)));
    s.take_dirty();

    // Retried every delay, without a write while the reason stays the same, never an error.
    let rep = s.tick(3 + DELAY / 2, &small, true);
    assert_eq!(rep.processed, 0, "not due yet");
    let rep = s.tick(4 + DELAY, &small, true);
    assert_eq!((rep.processed, rep.unplaceable), (1, 1));
    assert!(s.take_dirty().is_empty(), "same reason: no write");
    assert_eq!(state(&s, 1), VolumeState::Scheduling);

    // Space appears: placed at once, not after the next delay.
    let grown = [m("a", 100, &["hdd"]), m("b", 90, &["ssd"])];
    let rep = s.tick(5 + DELAY, &grown, true);
    assert_eq!(rep.placed, 1);
    assert_eq!((node(&s, 1), why(&s)), (Some("b"), None));
}

#[test]
fn placed_volume_is_not_rewritten_within_delay_then_re_placed() {
    let mut machines = vec![m("a", 100, &[]), m("b", 50, &[])];
    let mut s = sched();
    s.create("v", spec(10, &[]), None, 0).unwrap();
    s.tick(0, &machines, true);
    assert_eq!(node(&s, 1), Some("a"));
    s.take_dirty();
    for t in 1..=10 {
        let rep = s.tick(t * SEC, &machines, true);
        assert_eq!(rep.placed, 0, "t={t}s");
        assert!(s.take_dirty().is_empty(), "no write within delay (t={t}s)");
    }
    assert_eq!(s.get(1).unwrap().updated_ns, 0);
    // a did not act within delay and b has more room now: moved to b.
    machines[0].available = 20 * GIB;
    let rep = s.tick(DELAY + 1, &machines, true);
    assert_eq!(rep.placed, 1);
    assert_eq!(node(&s, 1), Some("b"));
    assert_eq!(s.take_dirty().changed, [1]);
    assert_eq!(s.promised("a"), 0);
    assert!(matches!(s.report(1, "a", Report::Ready, DELAY + 2), Err(SchedError::NotOwner { .. })));
    // Stuck again: re-placed on the same machine once per delay.
    let rep = s.tick(2 * DELAY + 2, &machines, true);
    assert_eq!((rep.placed, node(&s, 1)), (1, Some("b")));
    assert_eq!(s.get(1).unwrap().updated_ns, 2 * DELAY + 2);
    check_invariants(&s, &["a", "b"]);
}

// ---- healing ----

#[test]
fn volumes_of_a_dead_machine_are_re_placed_once_elsewhere() {
    let mut machines = vec![m("a", 1000, &[]), m("b", 100, &[]), m("c", 100, &[])];
    let mut s = sched();
    for i in 0..4 {
        s.create(&format!("v{i}"), spec(10, &[]), None, 0).unwrap();
    }
    s.tick(0, &machines, true);
    assert_eq!(s.volumes_on("a").count(), 4);
    s.report(1, "a", Report::Ready, 1).unwrap();
    s.report(2, "a", Report::Ready, 1).unwrap();
    s.patch(2, spec(20, &[]), 2).unwrap();
    s.tick(3, &machines, true); // 2 → resizing; 3, 4 still scheduling (placed)
    assert_eq!(state(&s, 2), VolumeState::Resizing);

    machines[0].alive = false;
    let rep = s.tick(4, &machines, true);
    assert_eq!((rep.machines_died, rep.healed, rep.placed), (1, 4, 4));
    assert_eq!(s.volumes_on("a").count(), 0);
    assert_eq!(s.promised("a"), 0);
    for id in 1..=4 {
        let v = s.get(id).unwrap();
        assert_eq!(v.state, VolumeState::Scheduling);
        assert!(matches!(v.node.as_deref(), Some("b" | "c")), "{v:?}");
        assert_eq!(v.actual, None, "the new node starts empty");
    }
    let rep = s.tick(5, &machines, true);
    assert_eq!((rep.healed, rep.placed), (0, 0), "healed once");
    // Disappearing from the list counts as dying.
    let on_b: Vec<u64> = s.volumes_on("b").collect();
    let rep = s.tick(6, &machines[..1], true);
    assert_eq!(rep.machines_died, 2);
    assert!(on_b.iter().all(|id| node(&s, *id).is_none()), "nowhere alive to go");
    check_invariants(&s, &["a", "b", "c"]);
}

#[test]
fn returning_machine_does_not_steal_and_flapping_does_not_double_place() {
    let names = ["a", "b", "c"];
    let up = vec![m("a", 1000, &[]), m("b", 500, &[]), m("c", 500, &[])];
    let mut down = up.clone();
    down[0].alive = false;
    let mut s = sched();
    for _ in 0..6 {
        s.create("v", spec(10, &[]), None, 0).unwrap();
    }
    s.tick(0, &up, true);
    assert_eq!(s.volumes_on("a").count(), 6);
    s.tick(1, &down, true);
    assert_eq!(s.volumes_on("a").count(), 0);
    let placed: Vec<_> = (1..=6).map(|id| node(&s, id).map(str::to_owned)).collect();
    check_invariants(&s, &names);

    // a comes back: nothing moves back to it.
    let rep = s.tick(2, &up, true);
    assert_eq!((rep.healed, rep.placed), (0, 0));
    assert_eq!((1..=6).map(|id| node(&s, id).map(str::to_owned)).collect::<Vec<_>>(), placed);
    // But new volumes may go there.
    s.create("new", spec(10, &[]), None, 2).unwrap();
    s.tick(3, &up, true);
    assert_eq!(node(&s, 7), Some("a"));

    // Flapping: at each death only what is on a moves; nothing ever sits on two machines.
    for t in 4..20 {
        let rep = s.tick(t, if t % 2 == 0 { &down } else { &up }, true);
        if t == 4 {
            assert_eq!(rep.healed, 1, "only the volume placed since a returned");
        }
        check_invariants(&s, &names);
        for id in 1..=7 {
            assert!(node(&s, id).is_some(), "volume {id} placed");
        }
    }
    let total: usize = names.iter().map(|n| s.volumes_on(n).count()).sum();
    assert_eq!(total, 7);
}

#[test]
fn cloning_on_a_dead_machine_waits_for_its_parent() {
    let mut s = sched();
    let up = [m("a", 100, &[]), m("b", 50, &[])];
    let down = [dead(m("a", 100, &[])), m("b", 50, &[])];
    s.create("p", spec(10, &[]), None, 0).unwrap();
    s.tick(0, &up, true);
    s.report(1, "a", Report::Ready, 1).unwrap();
    s.create("c", spec(10, &[]), Some(1), 2).unwrap();
    s.tick(3, &up, true);
    assert_eq!(state(&s, 2), VolumeState::Cloning);

    s.tick(4, &down, true);
    assert_eq!((state(&s, 1), node(&s, 1)), (VolumeState::Scheduling, Some("b")));
    let c = s.get(2).unwrap();
    assert_eq!((c.state, c.node.as_deref(), c.parent_id), (VolumeState::Pending, None, Some(1)));
    assert_eq!(c.waiting_reason.as_deref(), Some("parent 1 is scheduling"));

    // The parent is made on b: the clone follows at once.
    s.report(1, "b", Report::Ready, 5).unwrap();
    s.tick(6, &down, true);
    assert_eq!((state(&s, 2), node(&s, 2)), (VolumeState::Cloning, Some("b")));
    check_invariants(&s, &["a", "b"]);
}

#[test]
fn deleting_and_error_volumes_keep_their_dead_node() {
    let (mut s, _, machines) = setup(Setup::Deleting);
    s.create("e", spec(1, &[]), None, 3).unwrap();
    s.tick(3, &machines, true);
    s.report(2, "m1", Report::Failed { message: "x".into(), give_up: true }, 4).unwrap();
    let rep = s.tick(5, &[dead(m("m1", 100, &[]))], true);
    assert_eq!((rep.machines_died, rep.healed), (1, 0));
    assert_eq!((state(&s, 1), node(&s, 1)), (VolumeState::Deleting, Some("m1")));
    assert_eq!((state(&s, 2), node(&s, 2)), (VolumeState::Error, Some("m1")));
}

// ---- lease and cost ----

#[test]
fn nothing_runs_without_the_lease_and_gain_rescans() {
    let machines = [m("a", 100, &[])];
    let mut s = sched();
    s.create("v", spec(1, &[]), None, 0).unwrap();
    let rep = s.tick(1, &machines, false);
    assert_eq!(rep, TickReport::default());
    assert_eq!(node(&s, 1), None);
    assert!(!s.is_leading());

    let rep = s.tick(2, &machines, true);
    assert!(rep.leading && rep.rescanned);
    assert_eq!(node(&s, 1), Some("a"));
    assert!(!s.tick(3, &machines, true).rescanned, "rescan only on gain");

    // Lost: reset. Work queued meanwhile is picked up by the rescan on regain.
    assert!(!s.tick(4, &machines, false).leading);
    s.create("w", spec(1, &[]), None, 5).unwrap();
    s.tick(6, &machines, false);
    assert_eq!(node(&s, 2), None);
    let rep = s.tick(7, &machines, true);
    assert!(rep.rescanned);
    assert_eq!(node(&s, 2), Some("a"));
    // Volume 1 is placed and within delay: the rescan looked at it but did not write it.
    assert_eq!(s.get(1).unwrap().updated_ns, 2);
}

#[test]
fn gain_heals_only_machines_listed_dead() {
    let ready_on = |id: u64, n: &str| Volume {
        id,
        name: String::new(),
        requested: spec(1, &[]),
        actual: Some(spec(1, &[])),
        state: VolumeState::Ready,
        node: Some(n.into()),
        parent_id: None,
        error: String::new(),
        error_count: 0,
        created_ns: 0,
        updated_ns: 0,
        waiting_reason: None,
    };
    let mut patched = ready_on(3, "x");
    patched.state = VolumeState::Pending;
    patched.requested = spec(2, &[]);
    let mut s = sched();
    s.restore([ready_on(1, "x"), ready_on(2, "y"), patched]).unwrap();
    let mut machines = vec![dead(m("y", 10, &[])), m("z", 10, &[])];
    let rep = s.tick(1, &machines, true);
    assert_eq!((rep.rescanned, rep.healed), (true, 1));
    assert_eq!((state(&s, 1), node(&s, 1)), (VolumeState::Ready, Some("x")), "x has not reported yet");
    assert_eq!((state(&s, 2), node(&s, 2)), (VolumeState::Scheduling, Some("z")));
    let v = s.get(3).unwrap();
    assert_eq!((v.state, v.waiting_reason.as_deref()), (VolumeState::Pending, Some("node x has not reported yet")));
    // x reports: the patched volume moves on at its retry.
    machines.push(m("x", 10, &[]));
    s.tick(2, &machines, true);
    assert_eq!(state(&s, 3), VolumeState::Pending);
    s.tick(2 + DELAY, &machines, true);
    assert_eq!((state(&s, 3), node(&s, 3)), (VolumeState::Resizing, Some("x")));
    assert_eq!(s.get(3).unwrap().waiting_reason, None);
}

#[test]
fn idle_tick_does_nothing() {
    let machines = [m("a", 1000, &[]), m("b", 1000, &[])];
    let mut s = sched();
    for _ in 0..100 {
        s.create("v", spec(1, &[]), None, 0).unwrap();
    }
    s.tick(0, &machines, true);
    for id in 1..=100 {
        let n = node(&s, id).unwrap().to_owned();
        s.report(id, &n, Report::Ready, 1).unwrap();
    }
    s.tick(2, &machines, true);
    s.take_dirty();
    for t in 3..1000 {
        let rep = s.tick(t * SEC, &machines, true);
        assert_eq!(rep.processed, 0);
    }
    assert!(s.take_dirty().is_empty());
}

#[test]
fn work_per_tick_is_bounded() {
    let mut s = Scheduler::new(SchedConfig { delay_ns: DELAY, max_work_per_tick: 3 });
    for _ in 0..10 {
        s.create("v", spec(1, &[]), None, 0).unwrap();
    }
    let machines = [m("a", 100, &[])];
    let reps: Vec<(usize, usize)> = (0..5).map(|t| s.tick(t, &machines, true)).map(|r| (r.placed, r.backlog)).collect();
    assert_eq!(reps, [(3, 7), (3, 4), (3, 1), (1, 0), (0, 0)]);
}

// ---- persistence ----

#[test]
fn dirty_and_restore() {
    let (mut s, _, machines) = setup(Setup::Ready);
    s.create("b", spec(1, &[]), None, 5).unwrap();
    s.create("c", spec(1, &[]), None, 5).unwrap();
    s.delete(3, 6).unwrap(); // unplaced: removed at once
    assert_eq!(s.take_dirty(), Dirty { changed: vec![2], removed: vec![3] });
    assert!(s.take_dirty().is_empty());

    let saved: Vec<Volume> = s.list(None).cloned().collect();
    let json = serde_json::to_string(&saved).unwrap();
    let mut r = sched();
    r.restore(serde_json::from_str::<Vec<Volume>>(&json).unwrap()).unwrap();
    assert_eq!(r.next_id(), 3, "continues after the highest stored id");
    r.ensure_next_id(s.next_id());
    assert_eq!(r.create("d", spec(1, &[]), None, 7).unwrap().id, 4);
    assert_eq!(r.list(Some(VolumeState::Ready)).map(|v| v.id).collect::<Vec<_>>(), [1]);
    assert_eq!(r.list(Some(VolumeState::Scheduling)).count(), 2);
    let rep = r.tick(8, &machines, true);
    assert!(rep.rescanned);
    assert_eq!(rep.placed, 2);

    let dup = vec![saved[0].clone(), saved[0].clone()];
    assert_eq!(r.restore(dup).unwrap_err(), SchedError::InvalidRestore { id: 1, reason: "duplicate id" });
    assert_eq!(r.len(), 3, "a refused restore changes nothing");
}

#[test]
fn reordered_and_duplicated_machine_lists() {
    let mut s = sched();
    s.create("v", spec(1, &[]), None, 0).unwrap();
    s.tick(0, &[m("a", 100, &[]), m("b", 10, &[])], true);
    assert_eq!(node(&s, 1), Some("a"));
    let rep = s.tick(1, &[m("b", 10, &[]), m("a", 100, &[])], true);
    assert_eq!(rep.machines_died, 0, "order does not matter");
    let rep = s.tick(2, &[m("b", 10, &[]), dead(m("a", 100, &[])), m("a", 100, &[])], true);
    assert_eq!(rep.machines_died, 0, "the last listing of a name wins");
    let rep = s.tick(3, &[m("b", 10, &[]), m("a", 100, &[]), dead(m("a", 100, &[]))], true);
    assert_eq!((rep.machines_died, node(&s, 1)), (1, Some("b")));
    check_invariants(&s, &["a", "b"]);
}
