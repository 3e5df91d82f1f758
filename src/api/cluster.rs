//! The cluster's own routes: `GET /v1/cluster`, and the digests and view parts peers send
//! (each signed with the heartbeat key; exempt from bearer tokens).

use std::sync::atomic::Ordering;

use serde_json::json;

use super::{error, json_response, ApiContext, Resp};
use crate::util::rfc3339;

/// `GET /v1/cluster`: the cluster as this member sees it.
pub(super) fn cluster_view(ctx: &ApiContext) -> serde_json::Value {
    let c = &ctx.cluster.shared;
    let mut v = serde_json::to_value(&**c.view.load()).unwrap_or_default();
    if !c.enabled {
        v["mode"] = json!("single");
        v["leader"] = serde_json::Value::Null;
    }
    v["leading"] = json!(c.enabled && c.is_leader());
    v["etcd"]["writes"] = json!(c.etcd_writes.load(Ordering::Relaxed));
    v["etcd"]["write_bytes"] = json!(c.etcd_write_bytes.load(Ordering::Relaxed));
    v["fenced_writes_refused"] = json!(c.fenced_refused.load(Ordering::Relaxed));
    v["leader_changes"] = json!(c.leader_changes.load(Ordering::Relaxed));
    v["digests"] = json!({
        "sent": c.digests_sent.load(Ordering::Relaxed),
        "received": c.digests_received.load(Ordering::Relaxed),
        "refused": c.digests_refused.load(Ordering::Relaxed),
    });
    v["forwarded"] = json!({
        "to_leader": c.forwarded.load(Ordering::Relaxed),
        "refused": c.forward_refused.load(Ordering::Relaxed),
    });
    v["tables_revision"] = json!(c.tables_revision.load(Ordering::Relaxed));
    v["tables_bad_rows"] = json!(c.bad_rows.load(Ordering::Relaxed));
    // The leader's answer view this member holds (cluster mode).
    if c.enabled {
        let held = ctx.control.cluster_view.load();
        v["view"] = json!({
            "serial": held.as_ref().map_or(0, |s| s.generation),
            "term": held.as_ref().map_or(0, |s| s.term),
            "taken": held.as_ref().map(|s| rfc3339(s.taken_ns)),
        });
    }
    v
}

/// `POST /v1/cluster/digest`: a peer's digest (signed with the heartbeat key).
pub(super) fn cluster_digest(ctx: &ApiContext, body: &[u8]) -> Resp {
    let link = &ctx.cluster;
    let Some(input) = &link.input else { return error(404, "not in cluster mode") };
    let keys = ctx.engine.pipeline.keyring.load();
    match crate::cluster::digest::decode(body, &keys) {
        Ok(d) if !link.shared.view.load().members.iter().any(|m| m.node == d.node && m.node != link.shared.node) => {
            link.shared.digests_refused.fetch_add(1, Ordering::Relaxed);
            // Also the first digests of a member that joined less than a second ago (this
            // member reads the member list once a second): the sender delivers them again.
            tracing::debug!(node = %d.node, "digest from a node that is not a live member refused");
            error(403, &format!("{:?} is not a live member of this cluster", d.node))
        }
        Ok(d) => {
            let now = link.clock.now_ns();
            let heard =
                d.heard.iter().map(|h| (h.id, now.saturating_sub(u64::from(h.age_ms) * 1_000_000), h.status)).collect();
            let services: Vec<(u64, crate::control::cluster::Relayed)> =
                d.services.into_iter().map(|(age, r)| (now.saturating_sub(u64::from(age) * 1_000_000), r)).collect();
            link.shared.digests_received.fetch_add(1, Ordering::Relaxed);
            let accepted = d.heard.len();
            let relayed = services.len();
            let _ = input.send(crate::control::cluster::ClusterInput::Digest {
                node: d.node,
                impaired: d.impaired,
                heard,
                services,
            });
            json_response(200, &json!({"accepted": accepted, "services": relayed}))
        }
        Err(e) => {
            link.shared.digests_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "peer digest refused");
            error(if e == crate::cluster::digest::DigestError::BadTag { 403 } else { 400 }, &e.to_string())
        }
    }
}

/// `POST /v1/cluster/view`: a part of the leader's answer view (signed with the heartbeat key);
/// answers the serial this member holds after it (`409` with it when the part builds on
/// another view or is older than it).
pub(super) fn cluster_view_part(ctx: &ApiContext, body: &[u8]) -> Resp {
    let link = &ctx.cluster;
    if link.input.is_none() {
        return error(404, "not in cluster mode");
    }
    let keys = ctx.engine.pipeline.keyring.load();
    match crate::cluster::view::decode(body, &keys) {
        Ok((node, _))
            if !link.shared.view.load().members.iter().any(|m| m.node == node && m.node != link.shared.node) =>
        {
            link.shared.digests_refused.fetch_add(1, Ordering::Relaxed);
            error(403, &format!("{node:?} is not a live member of this cluster"))
        }
        Ok((_, part)) if part.term < link.shared.view.load().term => {
            let held = ctx.control.views.lock().held_serial();
            json_response(409, &json!({"error": "a view of an earlier leader", "held": held}))
        }
        Ok((_, part)) => match ctx.control.apply_view(part, link.clock.now_ns()) {
            Ok(held) => json_response(200, &json!({"held": held})),
            Err(r) => {
                let held = match r {
                    crate::control::view::Refused::Stale { held }
                    | crate::control::view::Refused::BaseMismatch { held } => held,
                };
                json_response(409, &json!({"error": r.to_string(), "held": held}))
            }
        },
        Err(e) => {
            link.shared.digests_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "peer view refused");
            error(if e == crate::cluster::view::ViewError::BadTag { 403 } else { 400 }, &e.to_string())
        }
    }
}
