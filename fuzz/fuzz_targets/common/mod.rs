//! Checks shared by the fuzz targets.

use heartsink::proto::octavia::Heartbeat;

/// Invariants of a successfully parsed heartbeat, through the public API only: every list the
/// state model merges is sorted by id with one entry per id (strictly increasing), and the
/// member count is the sum over the status pools.
pub fn check_heartbeat(hb: &Heartbeat) {
    let listeners = hb.listeners();
    for w in listeners.windows(2) {
        assert!(w[0].id < w[1].id, "listeners() not strictly increasing: {} then {}", w[0].id, w[1].id);
    }
    let pools = hb.status_pools();
    for w in pools.windows(2) {
        assert!(w[0].id < w[1].id, "status_pools() not strictly increasing: {} then {}", w[0].id, w[1].id);
    }
    let mut total = 0;
    for pool in pools {
        let members: Vec<_> = hb.members(pool).collect();
        for w in members.windows(2) {
            assert!(w[0].id < w[1].id, "members({}) not strictly increasing: {} then {}", pool.id, w[0].id, w[1].id);
        }
        total += members.len();
    }
    assert_eq!(hb.member_count(), total, "member_count() disagrees with members()");
    // Every pool the status rules read has the shape its version says.
    let legacy = hb.ver.unwrap_or(0) < 2;
    assert!(pools.iter().all(|p| p.nested == legacy), "status_pools() mixes nested and top-level pools");
}
