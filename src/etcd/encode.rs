//! Request bodies for the JSON gateway: bytes as base64, int64 as strings (proto3 JSON).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::types::{Compare, CompareOp, CompareTarget, LeaseId, Txn, TxnOp};

pub(crate) fn b64(bytes: &[u8]) -> Value {
    Value::String(STANDARD.encode(bytes))
}

fn int(v: i64) -> Value {
    Value::String(v.to_string())
}

/// `RangeRequest`: `limit` 0 = no limit, `revision` 0 = the newest.
pub(crate) fn range(key: &[u8], range_end: Option<&[u8]>, limit: i64, revision: i64) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), b64(key));
    if let Some(end) = range_end {
        m.insert("range_end".into(), b64(end));
    }
    if limit > 0 {
        m.insert("limit".into(), int(limit));
    }
    if revision > 0 {
        m.insert("revision".into(), int(revision));
    }
    Value::Object(m)
}

/// `PutRequest`.
pub(crate) fn put(key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), b64(key));
    m.insert("value".into(), b64(value));
    if let Some(l) = lease {
        m.insert("lease".into(), int(l.0));
    }
    Value::Object(m)
}

/// `DeleteRangeRequest`.
pub(crate) fn delete(key: &[u8], range_end: Option<&[u8]>) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), b64(key));
    if let Some(end) = range_end {
        m.insert("range_end".into(), b64(end));
    }
    Value::Object(m)
}

fn compare(c: &Compare) -> Value {
    let result = match c.op {
        CompareOp::Equal => "EQUAL",
        CompareOp::NotEqual => "NOT_EQUAL",
        CompareOp::Greater => "GREATER",
        CompareOp::Less => "LESS",
    };
    let (target, field, operand) = match &c.target {
        CompareTarget::CreateRevision(r) => ("CREATE", "create_revision", int(*r)),
        CompareTarget::ModRevision(r) => ("MOD", "mod_revision", int(*r)),
        CompareTarget::Version(v) => ("VERSION", "version", int(*v)),
        CompareTarget::Value(v) => ("VALUE", "value", b64(v)),
    };
    let mut m = Map::new();
    m.insert("key".into(), b64(&c.key));
    m.insert("result".into(), Value::String(result.into()));
    m.insert("target".into(), Value::String(target.into()));
    m.insert(field.into(), operand);
    Value::Object(m)
}

fn op(o: &TxnOp) -> Value {
    match o {
        TxnOp::Put { key, value, lease } => json!({ "request_put": put(key, value, *lease) }),
        TxnOp::Delete { key, range_end } => json!({ "request_delete_range": delete(key, range_end.as_deref()) }),
        TxnOp::Range { key, range_end } => json!({ "request_range": range(key, range_end.as_deref(), 0, 0) }),
    }
}

/// `TxnRequest`.
pub(crate) fn txn(t: &Txn) -> Value {
    json!({
        "compare": t.compare.iter().map(compare).collect::<Vec<_>>(),
        "success": t.success.iter().map(op).collect::<Vec<_>>(),
        "failure": t.failure.iter().map(op).collect::<Vec<_>>(),
    })
}

/// `LeaseGrantRequest` (ID 0: etcd picks the id).
pub(crate) fn lease_grant(ttl_secs: i64) -> Value {
    json!({ "TTL": int(ttl_secs) })
}

/// `LeaseKeepAliveRequest`, `LeaseRevokeRequest`.
pub(crate) fn lease_id(id: LeaseId) -> Value {
    json!({ "ID": int(id.0) })
}

/// `CompactionRequest`.
pub(crate) fn compaction(revision: i64) -> Value {
    json!({ "revision": int(revision) })
}

/// `WatchRequest` with a `create_request`; `start_revision` 0 = from the next change; the
/// events carry the previous pair when `prev_kv`.
pub(crate) fn watch_create(key: &[u8], range_end: Option<&[u8]>, start_revision: i64, prev_kv: bool) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), b64(key));
    if let Some(end) = range_end {
        m.insert("range_end".into(), b64(end));
    }
    if start_revision > 0 {
        m.insert("start_revision".into(), int(start_revision));
    }
    if prev_kv {
        m.insert("prev_kv".into(), Value::Bool(true));
    }
    json!({ "create_request": Value::Object(m) })
}
