//! Registry tests on virtual time (plain µs).

use super::*;

const S: u64 = 1_000_000;

fn reg_with(cfg: TypeConfig) -> Registry {
    Registry::new(vec![cfg]).unwrap()
}

/// A type scoring `num stat.cpu`, default settings otherwise.
fn cpu_type() -> TypeConfig {
    TypeConfig::new("rawx").with_expr("num stat.cpu")
}

fn tags(list: &[(&str, TagValue)]) -> Vec<(String, TagValue)> {
    list.iter().map(|(n, v)| ((*n).to_owned(), v.clone())).collect()
}

fn push(reg: &mut Registry, addr: &str, t: &[(&str, TagValue)], op: ScoreOp, now: u64) -> PushOutcome {
    let r = Registration { type_name: "rawx".into(), addr: addr.into(), tags: tags(t), op };
    reg.push(&r, now).unwrap()
}

fn beat(reg: &mut Registry, addr: &str, cpu: i64, now: u64) -> PushOutcome {
    push(reg, addr, &[("stat.cpu", TagValue::Int(cpu))], ScoreOp::Unset, now)
}

const A: &str = "10.0.0.1:6000";

#[test]
fn builtins_and_config() {
    let reg = Registry::new(TypeConfig::builtins()).unwrap();
    assert_eq!(reg.service_types(), vec!["meta0", "meta1", "meta2", "rawx"]);
    let rawx = reg.type_config("rawx").unwrap();
    assert_eq!(rawx.score_expr, "root(3,((num stat.cpu)*(num stat.io)*(num stat.space)))");
    assert_eq!((rawx.score_timeout_s, rawx.score_variation_bound, rawx.alert_frequency_limit_s), (300, 5, 300));
    assert!(rawx.lock_at_first_register && !rawx.locked_may_expire);
    let t: TypeConfig = serde_json::from_str(r#"{"name":"x"}"#).unwrap();
    assert_eq!(t, TypeConfig::new("x"));
    assert!(serde_json::from_str::<TypeConfig>(r#"{"name":"x","bogus":1}"#).is_err());

    let e = Registry::new(vec![TypeConfig::new("acct").with_expr("1 +")]).unwrap_err();
    assert!(matches!(&e, RegistryError::BadExpression { type_name, .. } if type_name == "acct"));
    assert!(e.to_string().contains("\"acct\"") && e.to_string().contains("byte 3"), "{e}");
    assert_eq!(
        Registry::new(vec![TypeConfig::new("a"), TypeConfig::new("a")]).unwrap_err(),
        RegistryError::DuplicateType("a".into())
    );
    assert_eq!(Registry::new(vec![TypeConfig::new("")]).unwrap_err(), RegistryError::EmptyTypeName);
}

#[test]
fn tag_value_json_is_untagged() {
    let v: Vec<TagValue> = serde_json::from_str(r#"[1, 2.5, true, "x", -3]"#).unwrap();
    assert_eq!(
        v,
        vec![
            TagValue::Int(1),
            TagValue::Float(2.5),
            TagValue::Bool(true),
            TagValue::Str("x".into()),
            TagValue::Int(-3)
        ]
    );
    assert_eq!(serde_json::to_string(&v).unwrap(), r#"[1,2.5,true,"x",-3]"#);
}

#[test]
fn unknown_type_and_bad_address() {
    let mut reg = reg_with(cpu_type());
    let r = Registration { type_name: "nope".into(), addr: A.into(), tags: vec![], op: ScoreOp::Unset };
    assert_eq!(reg.push(&r, 0).unwrap_err(), RegistryError::UnknownType("nope".into()));
    for bad in ["10.0.0.1", "10.0.0.1:0", "host:6000", "", "10.0.0.1:99999"] {
        let r = Registration { type_name: "rawx".into(), addr: bad.into(), tags: vec![], op: ScoreOp::Unset };
        assert_eq!(reg.push(&r, 0).unwrap_err(), RegistryError::BadAddress(bad.into()));
    }
    let r = Registration { type_name: "rawx".into(), addr: "[::1]:6000".into(), tags: vec![], op: ScoreOp::Unset };
    assert!(reg.push(&r, 0).is_ok());
    assert!(reg.list("nope", false).is_err());
    assert!(reg.flush("nope").is_err());
}

#[test]
fn tags_filtered_merged_and_liveness() {
    let mut reg = reg_with(cpu_type());
    let t = [
        ("stat.cpu", TagValue::Int(50)),
        ("tag.vol", TagValue::Str("/d1".into())),
        ("other", TagValue::Int(1)),
        ("tag.1", TagValue::Bool(false)),
    ];
    push(&mut reg, A, &t, ScoreOp::Unset, 10 * S);
    let s = reg.get("rawx", A).unwrap();
    let names: Vec<&str> = s.tags.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["stat.cpu", "tag.vol", "tag.lock"]);
    assert_eq!((s.score_timestamp_s, s.tags_mtime_us), (10, 10 * S));
    // Merge: an old tag stays, a new one is added.
    push(&mut reg, A, &[("tag.loc", TagValue::Str("a.b".into()))], ScoreOp::Unset, 20 * S);
    let s = reg.get("rawx", A).unwrap();
    assert_eq!(s.tag("tag.vol"), Some(&TagValue::Str("/d1".into())));
    assert_eq!(s.tag("tag.loc"), Some(&TagValue::Str("a.b".into())));
    assert_eq!(s.score_timestamp_s, 20);
    // Lock and unlock carry no tags: no liveness refresh.
    reg.lock("rawx", A, Some(40), 30 * S).unwrap();
    reg.unlock("rawx", A, 31 * S).unwrap();
    assert_eq!(reg.get("rawx", A).unwrap().score_timestamp_s, 20);
    // A push with only foreign tags does not refresh either.
    push(&mut reg, A, &[("foo", TagValue::Int(1))], ScoreOp::Unset, 40 * S);
    assert_eq!(reg.get("rawx", A).unwrap().score_timestamp_s, 20);
}

#[test]
fn first_register_locks_at_zero() {
    let mut reg = reg_with(cpu_type());
    let t = [("stat.cpu", TagValue::Int(90)), ("tag.1", TagValue::Bool(true))];
    let o = push(&mut reg, A, &t, ScoreOp::Unset, S);
    assert!(o.created && o.locked_at_first_register && o.locked);
    assert_eq!(o.score, 0);
    let s = reg.get("rawx", A).unwrap();
    assert_eq!(s.tag("tag.lock"), Some(&TagValue::Bool(true)));
    assert_eq!(s.tag("tag.1"), None, "the hint is never stored");
    // Later pushes (even with the hint) keep it locked at 0 but merge tags.
    let t = [("stat.cpu", TagValue::Int(80)), ("tag.1", TagValue::Bool(true))];
    let o = push(&mut reg, A, &t, ScoreOp::Unset, 2 * S);
    assert!(!o.created && !o.locked_at_first_register && o.locked);
    assert_eq!(o.score, 0);
    assert_eq!(reg.get("rawx", A).unwrap().tag("stat.cpu"), Some(&TagValue::Int(80)));
    // Unlock: recompute from the last tags, rise capped from the locked value 0.
    let o = reg.unlock("rawx", A, 3 * S).unwrap();
    assert!(o.applied && !o.locked);
    assert_eq!(o.score, 5);
    assert_eq!(reg.get("rawx", A).unwrap().tag("tag.lock"), Some(&TagValue::Bool(false)));
}

#[test]
fn first_register_without_hint_or_setting() {
    // No hint: a plain new service, scored at once (from −1, no cap).
    let mut reg = reg_with(cpu_type());
    let o = beat(&mut reg, A, 90, S);
    assert!(o.created && !o.locked);
    assert_eq!((o.previous_score, o.score), (-1, 90));
    // Hint, but lock_at_first_register off.
    let mut cfg = cpu_type();
    cfg.lock_at_first_register = false;
    let mut reg = reg_with(cfg);
    let t = [("stat.cpu", TagValue::Int(90)), ("tag.1", TagValue::Str("true".into()))];
    let o = push(&mut reg, A, &t, ScoreOp::Unset, S);
    assert!(!o.locked);
    assert_eq!(o.score, 90);
    // An explicit lock on first register wins over the hint.
    let mut reg = reg_with(cpu_type());
    let t = [("stat.cpu", TagValue::Int(90)), ("tag.1", TagValue::Bool(true))];
    let o = push(&mut reg, A, &t, ScoreOp::Lock(70), S);
    assert!(o.locked && !o.locked_at_first_register);
    assert_eq!(o.score, 70);
}

#[test]
fn rise_cap_ramps_and_fall_is_immediate() {
    let mut cfg = TypeConfig::new("rawx").with_expr("100");
    cfg.lock_at_first_register = false;
    let mut reg = reg_with(cfg);
    reg.lock("rawx", A, Some(0), 0).unwrap();
    reg.unlock("rawx", A, 0).unwrap();
    assert_eq!(reg.get("rawx", A).unwrap().score, 5);
    let mut steps = 1;
    while reg.get("rawx", A).unwrap().score < 100 {
        let o = push(&mut reg, A, &[("stat.x", TagValue::Int(1))], ScoreOp::Unset, steps * S);
        steps += 1;
        assert_eq!(o.score, (5 * steps as i32).min(100));
    }
    assert_eq!(steps, 20, "0 → 100 in 20 refreshes at +5");
    // Fall: immediate.
    let mut reg = reg_with(cpu_type());
    beat(&mut reg, A, 90, S);
    assert_eq!(beat(&mut reg, A, 95, 2 * S).score, 95, "within the bound");
    assert_eq!(beat(&mut reg, A, 10, 3 * S).score, 10);
    assert_eq!(beat(&mut reg, A, 100, 4 * S).score, 15);
    // Bound ≤ 0 disables the cap; scores clamp to 0..=100; NaN is 0.
    let mut cfg = cpu_type();
    cfg.score_variation_bound = 0;
    let mut reg = reg_with(cfg);
    beat(&mut reg, A, 10, S);
    assert_eq!(beat(&mut reg, A, 250, 2 * S).score, 100);
    assert_eq!(beat(&mut reg, A, -7, 3 * S).score, 0);
    let o = push(&mut reg, A, &[("stat.cpu", TagValue::Str("nan".into()))], ScoreOp::Unset, 4 * S);
    assert_eq!(o.score, 0);
}

#[test]
fn undef_keeps_the_old_score() {
    let mut reg = reg_with(TypeConfig::new("rawx").with_expr("num stat.cpu + num stat.io"));
    // Never defined: stays −1.
    let o = beat(&mut reg, A, 40, S);
    assert_eq!(o.score, -1);
    push(&mut reg, A, &[("stat.io", TagValue::Int(10))], ScoreOp::Unset, 2 * S);
    assert_eq!(reg.get("rawx", A).unwrap().score, 50);
    // stat.io becomes non-numeric: UNDEF, the score stays.
    let o = push(&mut reg, A, &[("stat.io", TagValue::Str("n/a".into()))], ScoreOp::Unset, 3 * S);
    assert_eq!(o.score, 50);
}

#[test]
fn lock_unlock_semantics() {
    let mut reg = reg_with(cpu_type());
    beat(&mut reg, A, 90, S);
    let o = reg.lock("rawx", A, Some(150), 2 * S).unwrap();
    assert!(o.locked);
    assert_eq!(o.score, 100, "clamped");
    assert_eq!(reg.lock("rawx", A, None, 3 * S).unwrap().score, 0, "no score = 0");
    reg.lock("rawx", A, Some(50), 4 * S).unwrap();
    // Locked: pushes merge tags but keep the score.
    let o = beat(&mut reg, A, 20, 5 * S);
    assert_eq!(o.score, 50);
    assert_eq!(reg.get("rawx", A).unwrap().tag("stat.cpu"), Some(&TagValue::Int(20)));
    let s = reg.get("rawx", A).unwrap();
    assert_eq!((s.lock_mtime_us, s.tags_mtime_us), (4 * S, 5 * S));
    // Unlock recomputes: a fall is immediate.
    assert_eq!(reg.unlock("rawx", A, 6 * S).unwrap().score, 20);
    // Unlock from a lock at 50 with cpu 90: rise capped from 50.
    beat(&mut reg, A, 90, 7 * S);
    reg.lock("rawx", A, Some(50), 8 * S).unwrap();
    assert_eq!(reg.unlock("rawx", A, 9 * S).unwrap().score, 55);
    // Unlock of an unlocked service: no recompute, lock_mtime refreshed.
    assert_eq!(reg.unlock("rawx", A, 10 * S).unwrap().score, 55);
    assert_eq!(reg.get("rawx", A).unwrap().lock_mtime_us, 10 * S);
    // Unlock never creates; lock does.
    let o = reg.unlock("rawx", "10.0.0.2:6000", 11 * S).unwrap();
    assert!(!o.applied);
    assert!(reg.get("rawx", "10.0.0.2:6000").is_none());
    let o = reg.lock("rawx", "10.0.0.2:6000", Some(30), 12 * S).unwrap();
    assert!(o.created && o.locked);
    assert_eq!(reg.get("rawx", "10.0.0.2:6000").unwrap().score_timestamp_s, 0);
}

#[test]
fn tag_up_false_shortcut_and_alert_limit() {
    let mut reg = reg_with(cpu_type());
    beat(&mut reg, A, 90, S);
    let down = [("stat.cpu", TagValue::Int(90)), ("tag.up", TagValue::Bool(false))];
    let o = push(&mut reg, A, &down, ScoreOp::Unset, 2 * S);
    assert_eq!(o.score, 0);
    assert!(o.alert_down);
    let o = push(&mut reg, A, &down, ScoreOp::Unset, 10 * S);
    assert_eq!(o.score, 0);
    assert!(!o.alert_down, "within alert_frequency_limit_s");
    let o = push(&mut reg, A, &down, ScoreOp::Unset, 32 * S);
    assert!(o.alert_down);
    // Back up: climbs by the cap from 0.
    let up = [("stat.cpu", TagValue::Int(90)), ("tag.up", TagValue::Bool(true))];
    assert_eq!(push(&mut reg, A, &up, ScoreOp::Unset, 33 * S).score, 5);
    // The shortcut reads the push, not the stored tags: a push without tag.up recomputes.
    push(&mut reg, A, &down, ScoreOp::Unset, 34 * S);
    assert_eq!(beat(&mut reg, A, 90, 35 * S).score, 5);
    // Locked: no shortcut.
    reg.lock("rawx", A, Some(40), 36 * S).unwrap();
    assert_eq!(push(&mut reg, A, &down, ScoreOp::Unset, 37 * S).score, 40);
}

#[test]
fn expiry_keeps_listing_at_zero() {
    let mut reg = reg_with(cpu_type());
    beat(&mut reg, A, 90, 100 * S);
    assert!(reg.expire(400 * S).is_empty(), "300 s exactly: not yet");
    let g = reg.generation();
    assert_eq!(reg.expire(401 * S), vec![("rawx".to_owned(), A.to_owned())]);
    assert!(reg.generation() > g);
    let s = reg.get("rawx", A).unwrap();
    assert_eq!((s.score, s.score_timestamp_s, s.tags_mtime_us), (0, 401, 401 * S));
    assert_eq!(s.tag("tag.up"), Some(&TagValue::Bool(false)));
    let l = reg.list("rawx", false).unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].score, 0);
    // Already at 0: not expired again.
    assert!(reg.expire(1000 * S).is_empty());
    // A service never scored (−1) does not expire either.
    reg.lock("rawx", "10.0.0.9:1", Some(0), 0).unwrap();
    assert!(reg.expire(2000 * S).is_empty());
}

#[test]
fn locked_never_expires_unless_configured() {
    let mut reg = reg_with(cpu_type());
    beat(&mut reg, A, 90, S);
    reg.lock("rawx", A, Some(50), 2 * S).unwrap();
    assert!(reg.expire(10_000 * S).is_empty());
    assert_eq!(reg.get("rawx", A).unwrap().score, 50);

    let mut cfg = cpu_type();
    cfg.locked_may_expire = true;
    let mut reg = reg_with(cfg);
    beat(&mut reg, A, 90, S);
    reg.lock("rawx", A, Some(50), 2 * S).unwrap();
    assert_eq!(reg.expire(10_000 * S).len(), 1);
    let s = reg.get("rawx", A).unwrap();
    assert_eq!((s.score, s.locked), (0, false), "expiry unlocks");
    assert_eq!(s.tag("tag.lock"), Some(&TagValue::Bool(false)));
    // The host returns: it climbs back by the cap.
    assert_eq!(beat(&mut reg, A, 90, 10_001 * S).score, 5);
}

#[test]
fn deregister_guarded_by_mtime() {
    let mut reg = reg_with(cpu_type());
    beat(&mut reg, A, 90, 10 * S);
    assert_eq!(reg.deregister("rawx", A, Some(5 * S)).unwrap(), Deregistered::KeptNewer);
    reg.lock("rawx", A, Some(1), 20 * S).unwrap();
    assert_eq!(reg.deregister("rawx", A, Some(15 * S)).unwrap(), Deregistered::KeptNewer, "lock_mtime newer");
    assert_eq!(reg.deregister("rawx", A, Some(20 * S)).unwrap(), Deregistered::Removed);
    assert!(reg.get("rawx", A).is_none());
    assert_eq!(reg.deregister("rawx", A, None).unwrap(), Deregistered::NotFound);
    beat(&mut reg, A, 90, 30 * S);
    assert_eq!(reg.deregister("rawx", A, None).unwrap(), Deregistered::Removed);
}

#[test]
fn flush_removes_a_type() {
    let mut reg = Registry::new(vec![cpu_type(), TypeConfig::new("meta2")]).unwrap();
    beat(&mut reg, A, 90, S);
    beat(&mut reg, "10.0.0.2:6000", 90, S);
    reg.lock("meta2", A, None, S).unwrap();
    reg.take_dirty();
    assert_eq!(reg.flush("rawx").unwrap(), 2);
    assert_eq!(reg.flush("rawx").unwrap(), 0);
    assert_eq!(reg.len(), 1);
    assert!(reg.get("meta2", A).is_some());
    assert_eq!(
        reg.take_dirty(),
        vec![("rawx".to_owned(), A.to_owned()), ("rawx".to_owned(), "10.0.0.2:6000".to_owned())]
    );
}

#[test]
fn listing_ids_and_resolve() {
    let mut reg = reg_with(cpu_type());
    let t = [
        ("stat.cpu", TagValue::Int(90)),
        ("tag.service_id", TagValue::Str("rawx-1".into())),
        ("tag.vol", TagValue::Str("/d".into())),
    ];
    push(&mut reg, "10.0.0.2:6000", &t, ScoreOp::Unset, S);
    beat(&mut reg, A, 70, S);
    let l = reg.list("rawx", false).unwrap();
    assert_eq!(l.iter().map(|v| v.addr.as_str()).collect::<Vec<_>>(), vec![A, "10.0.0.2:6000"]);
    assert_eq!(l[1].id, "rawx-1");
    assert_eq!(l[0].id, A);
    assert!(l[1].tags.iter().all(|(n, _)| n.starts_with("tag.")));
    let full = reg.list("rawx", true).unwrap();
    assert_eq!(full[1].tags.iter().filter(|(n, _)| n.starts_with("stat.")).count(), 1);
    let json = serde_json::to_value(&l[1]).unwrap();
    assert_eq!(json["tags"]["tag.vol"], "/d");
    assert_eq!(json["locked"], false);

    assert_eq!(reg.resolve("rawx", "rawx-1"), Some("10.0.0.2:6000"));
    assert_eq!(reg.resolve("rawx", "1.2.3.4:5"), Some("1.2.3.4:5"), "host:port is itself");
    assert_eq!(reg.resolve("rawx", "nope"), None);
    assert_eq!(reg.resolve("meta9", "rawx-1"), None);
    // The id moves with the tag; deregister drops it.
    push(&mut reg, "10.0.0.2:6000", &[("tag.service_id", TagValue::Str("rawx-2".into()))], ScoreOp::Unset, 2 * S);
    assert_eq!(reg.resolve("rawx", "rawx-1"), None);
    assert_eq!(reg.resolve("rawx", "rawx-2"), Some("10.0.0.2:6000"));
    reg.deregister("rawx", "10.0.0.2:6000", None).unwrap();
    assert_eq!(reg.resolve("rawx", "rawx-2"), None);
}

#[test]
fn dirty_keys_and_generation() {
    let mut reg = reg_with(cpu_type());
    assert_eq!(reg.generation(), 0);
    beat(&mut reg, A, 90, S);
    beat(&mut reg, A, 90, 2 * S);
    beat(&mut reg, "10.0.0.2:6000", 90, 2 * S);
    assert_eq!(reg.generation(), 3);
    assert_eq!(reg.take_dirty(), vec![("rawx".into(), A.into()), ("rawx".into(), "10.0.0.2:6000".into())]);
    assert!(reg.take_dirty().is_empty());
    reg.deregister("rawx", A, None).unwrap();
    beat(&mut reg, A, 90, 3 * S);
    reg.unlock("rawx", "10.9.9.9:1", 3 * S).unwrap();
    assert_eq!(reg.take_dirty(), vec![("rawx".into(), A.into())], "each key once; ignored unlock not dirty");
    assert_eq!(reg.generation(), 5);
}

#[test]
fn restore_does_not_relock() {
    let mut reg = reg_with(cpu_type());
    beat(&mut reg, A, 90, S);
    for i in 2..30 {
        beat(&mut reg, A, 90, i * S);
    }
    reg.lock("rawx", "10.0.0.2:6000", Some(33), S).unwrap();
    let saved: Vec<Service> =
        reg.iter().map(|s| serde_json::from_str(&serde_json::to_string(s).unwrap()).unwrap()).collect();

    // A restarted registry: restore, then the front end's first pushes carry tag.1.
    let mut reg2 = reg_with(cpu_type());
    let rep = reg2.restore(saved.clone());
    assert_eq!(rep, RestoreReport { restored: 2, skipped: 0 });
    assert_eq!(reg2.get("rawx", A), reg.get("rawx", A));
    assert!(reg2.take_dirty().is_empty());
    let t = [("stat.cpu", TagValue::Int(90)), ("tag.1", TagValue::Bool(true))];
    let o = push(&mut reg2, A, &t, ScoreOp::Unset, 40 * S);
    assert!(!o.locked && !o.locked_at_first_register);
    assert_eq!(o.score, 90);
    let o = push(&mut reg2, "10.0.0.2:6000", &t, ScoreOp::Unset, 40 * S);
    assert!(o.locked, "the admin lock survives");
    assert_eq!(o.score, 33);

    // Without restore, the original behaviour: all locked at 0.
    let mut cold = reg_with(cpu_type());
    assert!(push(&mut cold, A, &t, ScoreOp::Unset, 40 * S).locked_at_first_register);

    // Unknown types and bad addresses are skipped.
    let mut other = Registry::new(vec![TypeConfig::new("meta2")]).unwrap();
    assert_eq!(other.restore(saved), RestoreReport { restored: 0, skipped: 2 });
}

#[test]
fn refresh_with_same_tags_updates_in_place() {
    let mut reg = reg_with(cpu_type());
    let t = [("stat.cpu", TagValue::Int(90)), ("tag.vol", TagValue::Str("/data/1".into()))];
    push(&mut reg, A, &t, ScoreOp::Unset, S);
    let ptr = reg.get("rawx", A).unwrap().tags.as_ptr();
    let vol_ptr = reg.get("rawx", A).unwrap().tag("tag.vol").and_then(TagValue::as_str).unwrap().as_ptr();
    let t = [("stat.cpu", TagValue::Int(80)), ("tag.vol", TagValue::Str("/data/2".into()))];
    push(&mut reg, A, &t, ScoreOp::Unset, 2 * S);
    let s = reg.get("rawx", A).unwrap();
    assert_eq!(s.tags.as_ptr(), ptr, "no new tag vector");
    assert_eq!(s.tag("tag.vol").and_then(TagValue::as_str).unwrap().as_ptr(), vol_ptr, "string buffer reused");
    assert_eq!(s.tag("tag.vol"), Some(&TagValue::Str("/data/2".into())));
    assert_eq!(s.tags.len(), 3);
}

#[test]
fn service_serde_round_trip() {
    let mut reg = reg_with(cpu_type());
    let t = [("stat.cpu", TagValue::Int(90)), ("tag.loc", TagValue::Str("a.b.c.d".into()))];
    push(&mut reg, A, &t, ScoreOp::Unset, S);
    let s = reg.get("rawx", A).unwrap();
    let json = serde_json::to_value(s).unwrap();
    assert_eq!(json["tags"]["tag.loc"], "a.b.c.d");
    assert_eq!(json["score"], 90);
    let back: Service = serde_json::from_value(json).unwrap();
    assert_eq!(&back, s);
}

/// Issue 16: a machine beating every second with a 1.5 s timeout is never stale, whatever the
/// sub-second phase of its beats; one silent for 1.5 s + 1 µs is.
#[test]
fn liveness_is_decided_at_full_resolution() {
    let timeout_us = 1_500_000;
    for phase in [0, 1, 250_000, 500_000, 999_999] {
        let mut reg = reg_with(cpu_type());
        let first = 10 * S + phase;
        let mut last = first;
        for k in 0..20 {
            last = first + k * S;
            beat(&mut reg, A, 90, last);
            let s = reg.get("rawx", A).unwrap();
            assert_eq!(s.score_timestamp_us, last);
            // Checked every 1 ms until the next beat, and just before it.
            for t in (last..last + S).step_by(1_000).chain([last + S - 1]) {
                assert!(s.fresh_at(t, timeout_us), "phase {phase}: stale {} µs after a beat", t - last);
            }
            // The old whole-seconds rule declared it dead here (a false positive).
            let now = last + S - 1;
            let whole_seconds_age = now as f64 / 1e6 - s.score_timestamp_s as f64;
            if phase > 500_000 {
                assert!(whole_seconds_age > 1.5, "phase {phase}: the old rule would not have flapped");
            }
        }
        // Silent after the last beat: fresh at the timeout itself, stale 1 µs later.
        let s = reg.get("rawx", A).unwrap();
        assert!(s.fresh_at(last + timeout_us, timeout_us));
        assert!(!s.fresh_at(last + timeout_us + 1, timeout_us));
        assert_eq!(s.silent_us(last + timeout_us + 1), timeout_us + 1);
        assert!(s.fresh_at(last - 5, timeout_us), "a push in the future is fresh");
    }
}

/// The registry's own expiry uses the same rule: `score_timeout_s` after the last tagged push to
/// the µs, not whole seconds on both sides.
#[test]
fn expiry_at_full_resolution() {
    let mut cfg = cpu_type();
    cfg.score_timeout_s = 2;
    let mut reg = reg_with(cfg);
    let last = 10 * S + 999_999;
    beat(&mut reg, A, 90, last);
    assert!(reg.expire(last + 2 * S).is_empty(), "exactly the timeout: not yet");
    assert_eq!(reg.expire(last + 2 * S + 1).len(), 1);
    let s = reg.get("rawx", A).unwrap();
    assert_eq!((s.score_timestamp_us, s.score_timestamp_s), (last + 2 * S + 1, 13));
    // Beating every second, it never expires.
    let mut reg = reg_with({
        let mut c = cpu_type();
        c.score_timeout_s = 1;
        c
    });
    for k in 0..10 {
        let t = 20 * S + 999_999 + k * S;
        beat(&mut reg, A, 90, t);
        assert!(reg.expire(t + S).is_empty(), "expired at its next beat's time");
    }
}

#[test]
fn a_service_stored_without_us_gets_the_start_of_its_second() {
    let mut reg = reg_with(cpu_type());
    beat(&mut reg, A, 90, 7 * S + 400);
    let mut json: serde_json::Value = serde_json::to_value(reg.get("rawx", A).unwrap()).unwrap();
    json.as_object_mut().unwrap().remove("score_timestamp_us");
    let old: Service = serde_json::from_value(json).unwrap();
    assert_eq!(old.score_timestamp_us, 0);
    let mut reg2 = reg_with(cpu_type());
    reg2.restore([old]);
    assert_eq!(reg2.get("rawx", A).unwrap().score_timestamp_us, 7 * S);
    // A current one is kept to the µs.
    let mut reg3 = reg_with(cpu_type());
    reg3.restore([reg.get("rawx", A).unwrap().clone()]);
    assert_eq!(reg3.get("rawx", A).unwrap().score_timestamp_us, 7 * S + 400);
}
