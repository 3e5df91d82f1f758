//! `heartsink::etcd` against real etcd 3.4 members on loopback (tests/common/etcd.rs starts
//! them; `scripts/setup-etcd.sh` installs etcd): keys, transactions, leases, watches, and a
//! 3-member cluster with a member killed, restarted and hung.
//!
//! Each test starts its own cluster and bounds every wait; the whole file runs in about 20 s.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd;
use heartsink::etcd::{
    Client, Compare, CompareOp, EtcdError, EventKind, Kv, LeaseId, OpResponse, Txn, TxnOp, WatchEvent,
};

fn client(e: &Etcd) -> Client {
    Client::new(e.endpoints(), Client::DEFAULT_TIMEOUT).unwrap()
}

fn keys(kvs: &[Kv]) -> Vec<String> {
    kvs.iter().map(|kv| String::from_utf8_lossy(&kv.key).into_owned()).collect()
}

fn event(w: &mut heartsink::etcd::Watch) -> (EventKind, String, i64) {
    let e: WatchEvent = w.next_event().unwrap();
    (e.kind, String::from_utf8_lossy(&e.kv.key).into_owned(), e.kv.mod_revision)
}

#[test]
fn put_get_range_delete() {
    let e = Etcd::single();
    let c = client(&e);
    let r1 = c.put("t/a", "1", None).unwrap();
    let r2 = c.put("t/b", [0u8, 0xff, b'\n'], None).unwrap();
    assert_eq!(r2, r1 + 1, "each put is a revision");
    assert!(c.reachable());

    let (kv, rev) = c.get("t/a").unwrap();
    let kv = kv.unwrap();
    assert_eq!((kv.key.as_slice(), kv.value.as_slice()), (&b"t/a"[..], &b"1"[..]));
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version, kv.lease), (r1, r1, 1, None));
    assert_eq!(rev, r2);
    assert_eq!(c.get("t/b").unwrap().0.unwrap().value, [0u8, 0xff, b'\n'], "bytes survive base64");
    assert_eq!(c.get("t/missing").unwrap(), (None, r2));

    let r3 = c.put("t/a", "2", None).unwrap();
    let kv = c.get("t/a").unwrap().0.unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (r1, r3, 2));

    // A prefix read over several pages, at one revision; neighbours of the prefix stay out.
    for k in ["t/c", "t/d", "t/e", "t0", "s/x"] {
        c.put(k, "x", None).unwrap();
    }
    let last = c.put("t/f", "x", None).unwrap();
    let paged = Client::new(e.endpoints(), Client::DEFAULT_TIMEOUT).unwrap().with_page_size(2);
    let (kvs, rev) = paged.range_prefix("t/").unwrap();
    assert_eq!(keys(&kvs), ["t/a", "t/b", "t/c", "t/d", "t/e", "t/f"]);
    assert_eq!(rev, last);
    assert_eq!(keys(&c.range_prefix("t/").unwrap().0), keys(&kvs), "one page or three, the same list");
    assert_eq!(keys(&paged.range_prefix("").unwrap().0).len(), 8, "the empty prefix is every key");

    assert_eq!(c.delete("t/a").unwrap(), (1, last + 1));
    assert_eq!(c.delete("t/a").unwrap(), (0, last + 1), "deleting nothing makes no revision");
    assert_eq!(c.delete_prefix("t/").unwrap().0, 5);
    assert_eq!(keys(&c.range_prefix("").unwrap().0), ["s/x", "t0"]);
}

#[test]
fn txn_compares_and_branches() {
    let e = Etcd::single();
    let c = client(&e);
    let key = "t/leader";
    let claim = |who: &str| {
        Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, who, None)])
            .or_else([TxnOp::get(key)])
    };
    // Create-if-absent: the first wins, the second sees the holder in its failure branch.
    let won = c.txn(&claim("n1")).unwrap();
    assert!(won.succeeded);
    assert!(matches!(won.responses.as_slice(), [OpResponse::Put(_)]));
    let created = won.revision;
    let lost = c.txn(&claim("n2")).unwrap();
    assert!(!lost.succeeded);
    assert_eq!(lost.revision, created, "a failed txn writes nothing");
    match lost.responses.as_slice() {
        [OpResponse::Range(r)] => {
            assert_eq!(r.kvs.len(), 1);
            assert_eq!((r.kvs[0].value.as_slice(), r.kvs[0].create_revision), (&b"n1"[..], created));
        }
        other => panic!("{other:?}"),
    }

    // Each target, each operator.
    let holds = |cmp: Compare| c.txn(&Txn::new().when([cmp])).unwrap().succeeded;
    assert!(holds(Compare::create_revision(key, CompareOp::Equal, created)), "the fencing compare");
    assert!(!holds(Compare::create_revision(key, CompareOp::NotEqual, created)));
    assert!(holds(Compare::mod_revision(key, CompareOp::Equal, created)));
    assert!(holds(Compare::version(key, CompareOp::Equal, 1)));
    assert!(!holds(Compare::version(key, CompareOp::Greater, 1)));
    assert!(holds(Compare::value(key, CompareOp::Equal, "n1")));
    assert!(holds(Compare::value(key, CompareOp::Greater, "n0")));
    assert!(holds(Compare::value(key, CompareOp::Less, "n2")));
    assert!(holds(Compare::value(key, CompareOp::NotEqual, "n2")));

    // A compare-and-swap on mod_revision; the stale one fails and runs its failure branch.
    c.put("t/other", "o", None).unwrap();
    let cas = |rev: i64, v: &str| {
        c.txn(
            &Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, rev)])
                .and_then([TxnOp::put(key, v, None), TxnOp::get_prefix("t/")])
                .or_else([TxnOp::delete("t/other"), TxnOp::delete_prefix("t/nothing/")]),
        )
        .unwrap()
    };
    let swapped = cas(created, "n1b");
    assert!(swapped.succeeded);
    match swapped.responses.as_slice() {
        [OpResponse::Put(p), OpResponse::Range(r)] => {
            assert_eq!(p.revision, swapped.revision);
            assert_eq!(keys(&r.kvs), ["t/leader", "t/other"]);
            assert_eq!(r.kvs[0].value, b"n1b", "the range sees the put before it");
        }
        other => panic!("{other:?}"),
    }
    let stale = cas(created, "n1c");
    assert!(!stale.succeeded);
    match stale.responses.as_slice() {
        [OpResponse::Delete(d1), OpResponse::Delete(d2)] => assert_eq!((d1.deleted, d2.deleted), (1, 0)),
        other => panic!("{other:?}"),
    }
    assert!(holds(Compare::version(key, CompareOp::Greater, 1)));
    assert!(holds(Compare::mod_revision(key, CompareOp::Less, stale.revision + 1)));
    assert_eq!(c.get(key).unwrap().0.unwrap().value, b"n1b");

    // Too many operations: etcd's own limit (128), a status the caller cannot retry away.
    let big = Txn::new().and_then((0..200).map(|i| TxnOp::put(format!("t/many/{i}"), "", None)));
    match c.txn(&big) {
        Err(EtcdError::Status { code: 3, message }) => assert!(message.contains("too many"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn lease_bound_key_expires_keepalive_then_none_and_revoke() {
    let e = Etcd::single();
    let c = client(&e);
    let id = c.lease_grant(2).unwrap();
    c.put("t/eph", "x", Some(id)).unwrap();
    assert_eq!(c.get("t/eph").unwrap().0.unwrap().lease, Some(id));
    let ttl = c.lease_keepalive(id).unwrap().expect("a live lease has a TTL");
    assert!((2..=5).contains(&ttl), "{ttl}");

    // Kept alive past its TTL, the key stays.
    let kept = Instant::now();
    while kept.elapsed() < Duration::from_millis(2600) {
        assert!(c.lease_keepalive(id).unwrap().is_some());
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(c.get("t/eph").unwrap().0.is_some(), "kept alive");

    // No more keepalives: the key goes with the lease, within TTL + etcd's expiry tick.
    let last_keepalive = Instant::now();
    loop {
        if c.get("t/eph").unwrap().0.is_none() {
            break;
        }
        assert!(last_keepalive.elapsed() < Duration::from_secs(ttl as u64 + 3), "the key outlived its lease");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(last_keepalive.elapsed() >= Duration::from_millis(1500), "not before the TTL");
    assert_eq!(c.lease_keepalive(id).unwrap(), None, "an expired lease: no TTL, not an error");
    assert_eq!(c.put("t/eph", "x", Some(id)), Err(EtcdError::LeaseNotFound));
    assert_eq!(c.lease_keepalive(LeaseId(0x1234_5678)).unwrap(), None, "a lease that never was");

    // Revoke deletes the bound keys at once.
    let id2 = c.lease_grant(30).unwrap();
    c.put("t/eph2", "y", Some(id2)).unwrap();
    c.lease_revoke(id2).unwrap();
    assert_eq!(c.get("t/eph2").unwrap().0, None);
    assert_eq!(c.lease_keepalive(id2).unwrap(), None);
    assert_eq!(c.lease_revoke(id2), Err(EtcdError::LeaseNotFound));
}

#[test]
fn watch_from_a_revision_in_order_then_idle_then_resume_and_compaction() {
    let e = Etcd::single();
    let c = client(&e);
    let r_a = c.put("w/a", "1", None).unwrap();
    c.put("v/outside", "x", None).unwrap();
    let (_, r_del) = c.delete("w/a").unwrap();
    // Two events at one revision.
    let r_txn =
        c.txn(&Txn::new().and_then([TxnOp::put("w/b", "2", None), TxnOp::put("w/c", "3", None)])).unwrap().revision;

    let idle = Duration::from_millis(400);
    let mut w = c.watch_prefix("w/", r_a, idle).unwrap();
    assert_eq!(w.revision(), r_a - 1);
    assert_eq!(event(&mut w), (EventKind::Put, "w/a".into(), r_a));
    let del = w.next_event().unwrap();
    assert_eq!((del.kind, del.kv.mod_revision), (EventKind::Delete, r_del));
    assert_eq!(del.prev_kv.unwrap().value, b"1", "a delete carries the pair it removed");
    assert_eq!(event(&mut w), (EventKind::Put, "w/b".into(), r_txn));
    assert_eq!(w.revision(), r_txn - 1, "half of a revision is not handed out");
    assert_eq!(event(&mut w), (EventKind::Put, "w/c".into(), r_txn));
    assert_eq!(w.revision(), r_txn);

    // A live change.
    let r_live = c.put("w/d", "4", None).unwrap();
    assert_eq!(event(&mut w), (EventKind::Put, "w/d".into(), r_live));

    // Nothing more: the read-idle timeout ends the watch, and keeps ending it.
    let t = Instant::now();
    assert_eq!(w.next_event(), Err(EtcdError::WatchIdle { idle }));
    assert!(t.elapsed() >= idle && t.elapsed() < idle * 5, "{:?}", t.elapsed());
    assert_eq!(w.next_event(), Err(EtcdError::WatchIdle { idle }));

    // Resume from revision() + 1: no gap, no repeat.
    let r_new = c.put("w/e", "5", None).unwrap();
    let mut w2 = c.watch_prefix("w/", w.revision() + 1, idle).unwrap();
    assert_eq!(event(&mut w2), (EventKind::Put, "w/e".into(), r_new));
    let mut k = c.watch_key("w/e", 0, idle).unwrap();
    let r_del_e = c.delete("w/e").unwrap().1;
    c.put("w/f", "not this key", None).unwrap();
    assert_eq!(event(&mut k), (EventKind::Delete, "w/e".into(), r_del_e));

    // Compaction: a watch from below it is told so (and where), and can list again.
    let head = c.put("w/g", "6", None).unwrap();
    c.compact(head).unwrap();
    let mut old = c.watch_prefix("w/", r_a, idle).unwrap();
    assert_eq!(old.next_event(), Err(EtcdError::Compacted { compact_revision: Some(head) }));
    let (kvs, rev) = c.range_prefix("w/").unwrap();
    assert_eq!(keys(&kvs), ["w/b", "w/c", "w/d", "w/f", "w/g"]);
    assert_eq!(rev, head);
}

#[test]
fn three_members_kill_restart_and_hang_one() {
    let mut e = Etcd::three();
    let t0 = Instant::now();
    let leader = common::wait_until("a raft leader", Duration::from_secs(10), || e.leader());
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (a, b) = (followers[0], followers[1]);
    // The client starts on follower a, then b, then the leader.
    let timeout = Client::DEFAULT_TIMEOUT;
    let c = Client::new(vec![e.endpoint(a), e.endpoint(b), e.endpoint(leader)], timeout).unwrap();
    c.put("c/k", "0", None).unwrap();
    assert_eq!(c.endpoint(), e.endpoint(a));

    // SIGKILL the member in use: the next calls move on to b at once (connection refused).
    e.kill(a);
    let t = Instant::now();
    c.put("c/k", "1", None).unwrap();
    assert!(t.elapsed() < timeout, "refused is fast: {:?}", t.elapsed());
    assert_eq!(c.endpoint(), e.endpoint(b));
    assert!(c.last_error().unwrap().1.contains(&e.endpoint(a)));
    assert_eq!(c.get("c/k").unwrap().0.unwrap().value, b"1");

    // The killed member comes back with its data and catches up.
    e.restart(a);
    let only_a = Client::new(vec![e.endpoint(a)], timeout).unwrap();
    common::wait_until("member a catches up", Duration::from_secs(10), || {
        only_a.get("c/k").ok().and_then(|(kv, _)| kv).filter(|kv| kv.value == b"1")
    });

    // A watch served by b, then b hangs (SIGSTOP): its connections stay open, so only the
    // read-idle timeout notices.
    let idle = Duration::from_millis(800);
    let mut w = Client::new(vec![e.endpoint(b)], timeout).unwrap().watch_prefix("c/", 0, idle).unwrap();
    e.stop(b);
    // The client's current endpoint is b: the call times out there and goes on.
    let t = Instant::now();
    c.put("c/k", "2", None).unwrap();
    let took = t.elapsed();
    assert!(took >= timeout && took < timeout * 3, "one timeout, then the next member: {took:?}");
    assert_ne!(c.endpoint(), e.endpoint(b));
    // Later calls stay on the member that answered: no new timeout.
    let t = Instant::now();
    assert_eq!(c.get("c/k").unwrap().0.unwrap().value, b"2");
    assert!(t.elapsed() < timeout);
    let t = Instant::now();
    assert_eq!(w.next_event(), Err(EtcdError::WatchIdle { idle }));
    assert!(t.elapsed() < idle * 4, "{:?}", t.elapsed());
    // A watch opened with the hung member first fails over as well.
    let ws = Client::new(vec![e.endpoint(b), e.endpoint(leader)], timeout).unwrap();
    let mut w2 = ws.watch_key("c/k", 0, idle).unwrap();
    assert_eq!(w2.endpoint(), e.endpoint(leader));
    let r = c.put("c/k", "3", None).unwrap();
    assert_eq!(w2.next_event().unwrap().kv.mod_revision, r);
    e.cont(b);

    // SIGKILL the leader: until the others elect one, calls answer "unavailable" (no leader)
    // or time out; within a few election timeouts they succeed again.
    e.kill(leader);
    let t = Instant::now();
    let value = common::wait_until("a put after the leader died", Duration::from_secs(15), || {
        c.put("c/k", "4", None).ok().and_then(|_| c.get("c/k").ok()).and_then(|(kv, _)| kv)
    });
    assert_eq!(value.value, b"4");
    eprintln!("leader killed: writes back after {:?}; test took {:?}", t.elapsed(), t0.elapsed());
}
