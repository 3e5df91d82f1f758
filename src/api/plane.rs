//! Admin routes of the control plane: the service registry (conscience), load-balancing pools,
//! and volumes (scheduler).
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/services?action=register\|lock\|unlock\|deregister` | one service or a list: `{type, addr, score?, tags?, mtime?}` |
//! | `POST /v1/services/lock`, `/unlock` | the same with that action |
//! | `POST /v1/services/flush?type=T` | removes every service of `T` |
//! | `GET /v1/services?type=T&full=1` | `[{addr, id, score, locked, tags}]` (`stat.*` too when full) |
//! | `GET /v1/service-types` | the configured types |
//! | `GET /v1/services/resolve?type=T&id=ID` | `{addr}`; 404 `Service ID [ID] not found` |
//! | `GET /v1/pools` | `{name: target string}` |
//! | `POST /v1/pools` | `{name, targets, force?}` → 201; 409 when it exists without `force` |
//! | `DELETE /v1/pools/{name}` | |
//! | `GET /v1/pools/{name}/next?size=&slot=` | a pool: one poll; a service type: `size` of it (slot first) |
//! | `POST /v1/pools/{name}/poll` | `{avoid: [ids], known: [ids], avoid_locations: [u64], known_locations: [u64]}` |
//! | `POST /v1/volumes` | `{name?, size, constraints?, clone_of?}` → 201 |
//! | `GET /v1/volumes?state=` / `GET /v1/volumes/{id}` | |
//! | `PATCH /v1/volumes/{id}` | `{size?, constraints?}`, only from `ready`; 304 when unchanged |
//! | `DELETE /v1/volumes/{id}` | → `deleting`; 409 while clones are pending |
//! | `POST /v1/volumes/{id}/state` | the machine agent: `{machine, state: ready\|resized\|removed\|failed, message?, give_up?}` |
//!
//! Registry and volume routes are commands to the control thread (answered once durable);
//! `next` and `poll` read the published snapshot and never wait for it. A poll answer carries
//! `x-oio-lb-flawed: 1` when the selection is flawed, as the conscience proxy does.

use axum::http::Method;
use serde_json::{json, Value};

use super::{error, json_response, read_json, validate, ApiContext, Outcome, Resp};
use crate::control::services::{PushAction, ServiceEntry};
use crate::control::{Command, RegistryCommand, VolumeCommand};
use crate::registry::lb::{next_instances, poll, LbError, Selection, ServiceRef};

fn query_map(query: &str) -> std::collections::BTreeMap<String, String> {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn entries(body: Value) -> Result<Vec<ServiceEntry>, Resp> {
    let list = match body {
        Value::Array(v) => v,
        v @ Value::Object(_) => vec![v],
        _ => return Err(error(400, "body must be a service object or a list of them")),
    };
    if list.len() > validate::MAX_PUSH {
        return Err(error(400, &format!("at most {} services per request", validate::MAX_PUSH)));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, v)| {
            let e = serde_json::from_value::<ServiceEntry>(v).map_err(|e| error(400, &format!("bad service: {e}")))?;
            validate::service(&e).map_err(|m| error(400, &format!("bad service #{i}: {m}")))?;
            Ok(e)
        })
        .collect()
}

fn lb_response(r: Result<Selection, LbError>) -> Resp {
    match r {
        Ok(sel) => {
            let flawed = sel.flawed;
            let resp = json_response(200, &json!({"services": sel.items, "flawed": flawed}));
            if flawed {
                resp.with_header("x-oio-lb-flawed", "1")
            } else {
                resp
            }
        }
        Err(e @ LbError::UnknownPool(_)) => error(404, &e.to_string()),
        Err(e @ (LbError::BadPool(_) | LbError::TooManyKnown { .. })) => error(400, &e.to_string()),
        Err(e) => error(503, &e.to_string()),
    }
}

fn id_list(v: &Value, key: &str) -> Result<Vec<String>, Resp> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_owned).ok_or_else(|| error(400, &format!("{key} must be a list of ids"))))
            .collect(),
        _ => Err(error(400, &format!("{key} must be a list of ids"))),
    }
}

fn loc_list(v: &Value, key: &str) -> Result<Vec<u64>, Resp> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_u64().ok_or_else(|| error(400, &format!("{key} must be a list of locations (u64)"))))
            .collect(),
        _ => Err(error(400, &format!("{key} must be a list of locations (u64)"))),
    }
}

fn volume_id(s: &str) -> Result<u64, Resp> {
    s.parse().map_err(|_| error(404, &format!("volume {s:?} not found")))
}

/// Routes of the control plane; `None` when the path is not one of them.
pub fn route(ctx: &ApiContext, method: &Method, segments: &[&str], query: &str, raw: &[u8]) -> Option<Outcome> {
    let call = |c: Command, ok: u16| Outcome::Call(c, ok);
    let body = || read_json(raw);
    let q = query_map(query);
    let r: Outcome = match (method.as_str(), segments) {
        ("POST", ["v1", "services"]) => {
            let action = match q.get("action").map(String::as_str).unwrap_or("register") {
                "register" => PushAction::Register,
                "lock" => PushAction::Lock,
                "unlock" => PushAction::Unlock,
                "deregister" => PushAction::Deregister,
                other => {
                    return Some(
                        error(400, &format!("action must be register, lock, unlock or deregister, not {other:?}"))
                            .into(),
                    )
                }
            };
            match body().and_then(entries) {
                Ok(entries) => call(Command::Registry(RegistryCommand::Push { action, entries }), 200),
                Err(r) => r.into(),
            }
        }
        ("POST", ["v1", "services", a @ ("lock" | "unlock")]) => {
            let action = if *a == "lock" { PushAction::Lock } else { PushAction::Unlock };
            match body().and_then(entries) {
                Ok(entries) => call(Command::Registry(RegistryCommand::Push { action, entries }), 200),
                Err(r) => r.into(),
            }
        }
        ("POST", ["v1", "services", "flush"]) => match q.get("type") {
            Some(t) => match validate::service_type("type", t) {
                Ok(()) => call(Command::Registry(RegistryCommand::Flush(t.clone())), 200),
                Err(m) => error(400, &m).into(),
            },
            None => error(400, "type is required").into(),
        },
        ("GET", ["v1", "services"]) => match q.get("type") {
            Some(t) => {
                let full = matches!(q.get("full").map(String::as_str), Some("1" | "true" | "yes"));
                call(Command::Registry(RegistryCommand::List { type_name: t.clone(), full }), 200)
            }
            None => error(400, "type is required").into(),
        },
        ("GET", ["v1", "services", "resolve"]) => match (q.get("type"), q.get("id")) {
            (Some(t), Some(id)) => {
                call(Command::Registry(RegistryCommand::Resolve { type_name: t.clone(), id: id.clone() }), 200)
            }
            _ => error(400, "type and id are required").into(),
        },
        ("GET", ["v1", "service-types"]) => call(Command::Registry(RegistryCommand::Types), 200),
        ("GET", ["v1", "pools"]) => {
            let snap = ctx.control.snapshot.load();
            let pools: serde_json::Map<String, Value> =
                snap.pools.iter().map(|(n, p)| (n.clone(), json!(p.to_target_string()))).collect();
            json_response(200, &pools).into()
        }
        ("POST", ["v1", "pools"]) => match body() {
            Ok(v) => {
                let name = v.get("name").and_then(Value::as_str);
                let targets = v.get("targets").and_then(Value::as_str);
                let force = v.get("force").and_then(Value::as_bool).unwrap_or(false);
                match (name, targets) {
                    (Some(n), Some(t)) if !n.is_empty() => match validate::pool(n, t) {
                        Ok(()) => call(
                            Command::Registry(RegistryCommand::PoolCreate {
                                name: n.to_owned(),
                                targets: t.to_owned(),
                                force,
                            }),
                            201,
                        ),
                        Err(m) => error(400, &m).into(),
                    },
                    _ => error(400, "name and targets (\"N,slotA,slotB;M,slotC;key=value\") are required").into(),
                }
            }
            Err(r) => r.into(),
        },
        ("DELETE", ["v1", "pools", name]) => {
            call(Command::Registry(RegistryCommand::PoolDelete((*name).to_owned())), 200)
        }
        ("GET", ["v1", "pools", name, "next"]) => {
            let snap = ctx.control.snapshot.load();
            let mut rng = rand::rng();
            match snap.pools.get(*name) {
                Some(pool) => lb_response(poll(&snap.world, pool, &[], &[], &mut rng)).into(),
                None => {
                    let size = match q.get("size").map(|s| s.parse::<u32>()) {
                        None => 1,
                        Some(Ok(n)) if n > 0 => n,
                        _ => return Some(error(400, "size must be a positive integer").into()),
                    };
                    lb_response(next_instances(&snap.world, name, size, q.get("slot").map(String::as_str), &mut rng))
                        .into()
                }
            }
        }
        ("POST", ["v1", "pools", name, "poll"]) => {
            let v = match body() {
                Ok(Value::Null) => json!({}),
                Ok(v) => v,
                Err(r) => return Some(r.into()),
            };
            let lists = (
                id_list(&v, "avoid"),
                id_list(&v, "known"),
                loc_list(&v, "avoid_locations"),
                loc_list(&v, "known_locations"),
            );
            let (avoid_ids, known_ids, avoid_locs, known_locs) = match lists {
                (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
                (Err(r), ..) | (_, Err(r), ..) | (_, _, Err(r), _) | (_, _, _, Err(r)) => return Some(r.into()),
            };
            let avoid: Vec<ServiceRef> = avoid_ids
                .iter()
                .map(|s| ServiceRef::Id(s))
                .chain(avoid_locs.iter().map(|l| ServiceRef::Location(*l)))
                .collect();
            let known: Vec<ServiceRef> = known_ids
                .iter()
                .map(|s| ServiceRef::Id(s))
                .chain(known_locs.iter().map(|l| ServiceRef::Location(*l)))
                .collect();
            let snap = ctx.control.snapshot.load();
            match snap.pools.get(*name) {
                Some(pool) => lb_response(poll(&snap.world, pool, &avoid, &known, &mut rand::rng())).into(),
                None => error(404, &format!("unknown pool {name:?}")).into(),
            }
        }
        ("POST", ["v1", "volumes"]) => match body().and_then(|v| checked(v, "bad volume", validate::volume_create)) {
            Ok(c) => call(Command::Volumes(VolumeCommand::Create(c)), 201),
            Err(r) => r.into(),
        },
        ("GET", ["v1", "volumes"]) => {
            let state = match q.get("state") {
                None => None,
                Some(s) => match crate::control::volumes::parse_state(s) {
                    Some(st) => Some(st),
                    None => return Some(error(400, &format!("unknown state {s:?}")).into()),
                },
            };
            call(Command::Volumes(VolumeCommand::List(state)), 200)
        }
        ("GET", ["v1", "volumes", id]) => match volume_id(id) {
            Ok(n) => call(Command::Volumes(VolumeCommand::Get(n)), 200),
            Err(r) => r.into(),
        },
        ("PATCH", ["v1", "volumes", id]) => {
            match volume_id(id)
                .and_then(|n| Ok((n, body().and_then(|v| checked(v, "bad change", validate::volume_patch))?)))
            {
                Ok((n, p)) => call(Command::Volumes(VolumeCommand::Patch(n, p)), 200),
                Err(r) => r.into(),
            }
        }
        ("DELETE", ["v1", "volumes", id]) => match volume_id(id) {
            Ok(n) => call(Command::Volumes(VolumeCommand::Delete(n)), 202),
            Err(r) => r.into(),
        },
        ("POST", ["v1", "volumes", id, "state"]) => {
            match volume_id(id)
                .and_then(|n| Ok((n, body().and_then(|v| checked(v, "bad report", validate::volume_report))?)))
            {
                Ok((n, r)) => call(Command::Volumes(VolumeCommand::Report(n, r)), 200),
                Err(r) => r.into(),
            }
        }
        (_, ["v1", "services" | "service-types" | "pools" | "volumes", ..]) => error(405, "method not allowed").into(),
        _ => return None,
    };
    Some(r)
}

/// Deserializes a request body and checks its bounds, answering `400 {what}: …` when it does
/// not fit and `400` naming the field when it is out of bounds.
fn checked<T: serde::de::DeserializeOwned>(
    v: Value,
    what: &str,
    check: fn(&T) -> Result<(), String>,
) -> Result<T, Resp> {
    let t = serde_json::from_value(v).map_err(|e| error(400, &format!("{what}: {e}")))?;
    check(&t).map_err(|m| error(400, &m))?;
    Ok(t)
}
