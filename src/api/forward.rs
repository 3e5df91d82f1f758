//! Cluster mode: writes sent to a member that does not lead go to the leader's admin API,
//! with the caller's `Authorization`, on threads of their own (at most [`FORWARDS`] at once), and
//! the leader's answer comes back as it is.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::IntoResponse;

use super::{error, MAX_BODY};

/// The header a member sets on a request it forwards to the leader (never forwarded twice).
pub(super) const FORWARDED: &str = "x-heartsink-forwarded-by";

/// Forwards in flight at most (more are refused at once, 503 + `Retry-After`): a leader that
/// hangs holds at most this many threads, never the control calls' pool.
const FORWARDS: usize = 16;
/// A forward's connect timeout and its whole budget (the leader answers a write once etcd
/// has it, within a few etcd timeouts).
const FORWARD_CONNECT: Duration = Duration::from_secs(1);
const FORWARD_TOTAL: Duration = Duration::from_secs(5);

static FORWARDS_IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// One forward slot, released on drop.
struct ForwardSlot;

impl ForwardSlot {
    fn take() -> Option<ForwardSlot> {
        let n = FORWARDS_IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        if n >= FORWARDS {
            FORWARDS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ForwardSlot)
    }
}

impl Drop for ForwardSlot {
    fn drop(&mut self) {
        FORWARDS_IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Cluster mode: whether a request changes the state only the leader writes (volumes, pools,
/// locks, deregistrations, manual failovers). A member that does not lead forwards it.
/// Registrations (service heartbeats) are not: every member applies them and relays them.
pub(super) fn leader_write(method: &Method, segments: &[&str], query: &str) -> bool {
    let m = method.as_str();
    match segments {
        ["v1", "volumes"] | ["v1", "volumes", _, "state"] | ["v1", "pools"] => m == "POST",
        ["v1", "volumes", _] => m == "PATCH" || m == "DELETE",
        ["v1", "pools", _] => m == "DELETE",
        ["v1", "services", "lock" | "unlock" | "flush"] | ["v1", "amphorae", _, "failover"] => m == "POST",
        ["v1", "services"] => {
            m == "POST"
                && form_urlencoded::parse(query.as_bytes())
                    .any(|(k, v)| k == "action" && matches!(&*v, "lock" | "unlock" | "deregister"))
        }
        _ => false,
    }
}

/// Sends a leader write to the leader and answers with its answer (so the write is answered
/// once the leader has it in etcd). No leader known, the leader unreachable, or a request
/// already forwarded once: `503` with `Retry-After` (the write was not applied, or, if the
/// leader fell mid-write, at most once: read back before retrying a create).
pub(super) async fn forward(
    shared: &crate::control::cluster::Shared,
    parts: &axum::http::request::Parts,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let refuse = |msg: String| {
        shared.forward_refused.fetch_add(1, Ordering::Relaxed);
        error(503, &msg).with_header("retry-after", "1").into_response()
    };
    if let Some(by) = parts.headers.get(FORWARDED) {
        return refuse(format!(
            "this member ({}) no longer leads (forwarded by {}): retry",
            shared.node,
            by.to_str().unwrap_or("?")
        ));
    }
    let Some(leader) = shared.leader_admin() else {
        return refuse("no cluster leader is known right now (an election is under way): retry".into());
    };
    let url = format!(
        "http://{leader}{}",
        parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned())
    );
    let method = parts.method.as_str().to_owned();
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    // The caller's credentials go along: the leader checks them as its own caller's.
    let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let node = shared.node.clone();
    let Some(slot) = ForwardSlot::take() else {
        return refuse(format!("{FORWARDS} writes are already on their way to the leader at {leader}: retry"));
    };
    // Its own thread, not the blocking pool of the control calls: a leader that accepts
    // connections but never answers (paused, partitioned) holds only forward slots, never this
    // member's own reads and registrations.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new().name("admin-forward".into()).spawn(move || {
        let _slot = slot;
        let _ = tx.send(send_forward(&method, &url, &node, content_type.as_deref(), authorization.as_deref(), &body));
    });
    if spawned.is_err() {
        return refuse("no thread to forward the write to the leader: retry".into());
    }
    let sent = rx.await;
    match sent {
        Ok(Ok((status, ct, retry, buf))) => {
            shared.forwarded.fetch_add(1, Ordering::Relaxed);
            let mut r = (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), buf).into_response();
            if let Ok(v) = HeaderValue::from_str(&ct) {
                r.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            if let Some(v) = retry.and_then(|v| HeaderValue::from_str(&v).ok()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        Ok(Err(e)) => refuse(format!("the leader at {leader} did not answer ({e}): retry")),
        Err(_) => refuse("forwarding to the leader failed: retry".into()),
    }
}

/// What the leader answered a forwarded request: status, content type, `Retry-After`, body.
type Forwarded = (u16, String, Option<String>, Vec<u8>);

/// Sends one forwarded request (blocking, within [`FORWARD_TOTAL`]).
fn send_forward(
    method: &str,
    url: &str,
    node: &str,
    content_type: Option<&str>,
    authorization: Option<&str>,
    body: &[u8],
) -> Result<Forwarded, String> {
    let agent = ureq::AgentBuilder::new().timeout_connect(FORWARD_CONNECT).timeout(FORWARD_TOTAL).build();
    let mut req = agent.request(method, url).set(FORWARDED, node);
    if let Some(ct) = content_type {
        req = req.set("content-type", ct);
    }
    if let Some(a) = authorization {
        req = req.set("authorization", a);
    }
    let r = if body.is_empty() { req.call() } else { req.send_bytes(body) };
    let resp = match r {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(e.to_string()),
    };
    let status = resp.status();
    let ct = resp.header("content-type").unwrap_or("application/json").to_owned();
    let retry = resp.header("retry-after").map(str::to_owned);
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(resp.into_reader(), MAX_BODY), &mut buf)
        .map_err(|e| e.to_string())?;
    Ok((status, ct, retry, buf))
}
