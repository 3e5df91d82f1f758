//! Every answer of etcd's JSON gateway, bytes to typed values: pure functions that never
//! panic, whatever the input (fuzzed by `fuzz/fuzz_targets/etcd_response.rs`).
//!
//! The gateway speaks proto3 JSON, with these quirks, all handled here:
//!
//! * `bytes` fields (keys, values) are base64 (standard alphabet; padding optional here);
//! * int64 and uint64 fields are JSON strings (`"revision":"145508"`); numbers are accepted too;
//! * fields holding their zero value are **omitted**: a failed txn has no `"succeeded"`, an
//!   empty range no `"kvs"`, a PUT event no `"type"` (only `"DELETE"` is written), a keepalive
//!   on an expired or unknown lease no `"TTL"` (HTTP 200 all the same); `null` reads as the
//!   zero value too;
//! * enums are names (`"DELETE"`), or their numbers;
//! * a unary error is an HTTP 4xx/5xx with `{"error", "message", "code"}` (gRPC code), read by
//!   [`error_body`]; an error inside a stream (keepalive, watch) is a 200 whose message is
//!   `{"error": {"grpc_code", "http_code", "message", "http_status"}}`;
//! * streamed answers (keepalive, watch) are wrapped in `{"result": …}`, one JSON object per
//!   line.
//!
//! Unknown fields are ignored (newer servers add some).

use std::borrow::Cow;

use base64::Engine as _;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::types::{
    DeleteResponse, EventKind, Kv, LeaseId, OpResponse, PutResponse, RangeResponse, TxnResponse, WatchEvent,
    WatchMessage,
};
use super::EtcdError;

/// gRPC status code of "not found" (a lease that does not exist).
pub const CODE_NOT_FOUND: i32 = 5;
/// gRPC status code of "out of range" (a compacted revision).
pub const CODE_OUT_OF_RANGE: i32 = 11;
/// gRPC status code of "unavailable" (no leader, no quorum, raft timeout).
pub const CODE_UNAVAILABLE: i32 = 14;
/// gRPC status code of "deadline exceeded".
pub const CODE_DEADLINE_EXCEEDED: i32 = 4;
/// gRPC status code of "unknown" (what the gateway reports for its own failures).
pub const CODE_UNKNOWN: i32 = 2;

// ---------------------------------------------------------------------------------------------
// The public decoders.

/// A range answer (`/v3/kv/range`).
pub fn range(body: &[u8]) -> Result<RangeResponse, EtcdError> {
    let w: WRange = parse(body, "range")?;
    let revision = header_revision(w_header(&w.header)?);
    Ok(w.into_typed(revision))
}

/// A put answer (`/v3/kv/put`).
pub fn put(body: &[u8]) -> Result<PutResponse, EtcdError> {
    let w: WPut = parse(body, "put")?;
    let revision = header_revision(w_header(&w.header)?);
    Ok(w.into_typed(revision))
}

/// A delete answer (`/v3/kv/deleterange`).
pub fn delete_range(body: &[u8]) -> Result<DeleteResponse, EtcdError> {
    let w: WDelete = parse(body, "delete")?;
    let revision = header_revision(w_header(&w.header)?);
    Ok(w.into_typed(revision))
}

/// A transaction answer (`/v3/kv/txn`). A failed compare is `succeeded: false` (the field is
/// omitted), not an error.
pub fn txn(body: &[u8]) -> Result<TxnResponse, EtcdError> {
    let w: WTxn = parse(body, "txn")?;
    let revision = header_revision(w_header(&w.header)?);
    let mut responses = Vec::with_capacity(w.responses.as_ref().map_or(0, Vec::len));
    for op in w.responses.unwrap_or_default() {
        responses.push(op.into_typed(revision)?);
    }
    Ok(TxnResponse { succeeded: w.succeeded, revision, responses })
}

/// A lease grant answer (`/v3/lease/grant`): the lease and the TTL etcd granted (it may be
/// longer than asked: etcd has a minimum TTL).
pub fn lease_grant(body: &[u8]) -> Result<(LeaseId, i64), EtcdError> {
    let w: WLeaseGrant = parse(body, "lease grant")?;
    w_header(&w.header)?;
    if !w.error.is_empty() {
        return Err(EtcdError::Status { code: CODE_UNKNOWN, message: w.error });
    }
    if w.id == 0 {
        return Err(EtcdError::Decode("lease grant: no lease id".into()));
    }
    Ok((LeaseId(w.id), w.ttl))
}

/// A keepalive answer (`/v3/lease/keepalive`, a stream of one message): `Some(ttl)` while the
/// lease lives, `None` when it has expired, was revoked or never existed (etcd then omits the
/// TTL: a 200, not an error). An error message in the stream (e.g. no leader) is an error.
pub fn lease_keepalive(body: &[u8]) -> Result<Option<i64>, EtcdError> {
    let w: WStream<WKeepAlive> = parse(first_line(body), "lease keepalive")?;
    let r = w.into_result("lease keepalive")?;
    w_header(&r.header)?;
    Ok((r.ttl > 0).then_some(r.ttl))
}

/// An answer that carries nothing but a header (`/v3/lease/revoke`, `/v3/kv/compaction`):
/// the header revision.
pub fn header_only(body: &[u8]) -> Result<i64, EtcdError> {
    let w: WHeaderOnly = parse(body, "answer")?;
    Ok(header_revision(w_header(&w.header)?))
}

/// One line of a watch stream (`/v3/watch`). An error message in the stream (e.g. no leader)
/// is an error; a cancel is a message with `canceled` set (the watch turns it into an error).
pub fn watch_message(line: &[u8]) -> Result<WatchMessage, EtcdError> {
    let w: WStream<WWatch> = parse(line, "watch")?;
    let r = w.into_result("watch")?;
    let revision = r.header.as_ref().map_or(0, |h| h.revision);
    let mut events = Vec::with_capacity(r.events.as_ref().map_or(0, Vec::len));
    for e in r.events.unwrap_or_default() {
        events.push(e.into_typed()?);
    }
    Ok(WatchMessage {
        revision,
        watch_id: r.watch_id,
        created: r.created,
        canceled: r.canceled,
        compact_revision: r.compact_revision,
        cancel_reason: r.cancel_reason,
        events,
    })
}

/// The error an HTTP status other than 200 stands for, from the gateway's
/// `{"error", "message", "code"}` body (any body: one that does not parse keeps the HTTP
/// status's meaning).
pub fn error_body(http_status: u16, body: &[u8]) -> EtcdError {
    match serde_json::from_slice::<WError>(body) {
        Ok(w) => {
            let message = if w.message.is_empty() { w.error } else { w.message };
            let code = match w.code {
                0 => code_of_http(http_status),
                c => c,
            };
            from_status(code, message)
        }
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            from_status(code_of_http(http_status), format!("HTTP {http_status}: {text}"))
        }
    }
}

/// The error of a gRPC status `code` with etcd's `message`.
pub fn from_status(code: i32, message: String) -> EtcdError {
    match code {
        CODE_NOT_FOUND if message.contains("lease not found") => EtcdError::LeaseNotFound,
        CODE_OUT_OF_RANGE if message.contains("compacted") => EtcdError::Compacted { compact_revision: None },
        CODE_UNAVAILABLE | CODE_DEADLINE_EXCEEDED => EtcdError::Unavailable { message },
        // The gateway's own context deadline (a request etcd could not finish: no quorum).
        CODE_UNKNOWN if message.contains("context deadline exceeded") => EtcdError::Unavailable { message },
        _ => EtcdError::Status { code, message },
    }
}

/// The gRPC code an HTTP status stands for when the body names none (the gateway's mapping,
/// reversed where it is one-to-one).
fn code_of_http(status: u16) -> i32 {
    match status {
        400 => 3,
        404 => CODE_NOT_FOUND,
        409 => 10,
        412 => 9,
        429 => 8,
        501 => 12,
        503 => CODE_UNAVAILABLE,
        504 => CODE_DEADLINE_EXCEEDED,
        _ => CODE_UNKNOWN,
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, EtcdError> {
    serde_json::from_slice(body).map_err(|e| EtcdError::Decode(format!("{what}: {e}")))
}

/// A stream's first message (the keepalive stream sends one line per request: one here).
fn first_line(body: &[u8]) -> &[u8] {
    match body.iter().position(|b| *b == b'\n') {
        Some(i) => &body[..i],
        None => body,
    }
}

fn w_header(h: &Option<WHeader>) -> Result<&WHeader, EtcdError> {
    h.as_ref().ok_or_else(|| EtcdError::Decode("no header".into()))
}

fn header_revision(h: &WHeader) -> i64 {
    h.revision
}

/// At most 40 characters of `s`, for messages.
fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

fn lease_of(id: i64) -> Option<LeaseId> {
    (id != 0).then_some(LeaseId(id))
}

// ---------------------------------------------------------------------------------------------
// The wire shapes (proto3 JSON). Every field is optional (`default`).

#[derive(Deserialize, Default)]
#[serde(default)]
struct WHeader {
    #[serde(deserialize_with = "int64")]
    revision: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WKv {
    #[serde(deserialize_with = "bytes")]
    key: Vec<u8>,
    #[serde(deserialize_with = "bytes")]
    value: Vec<u8>,
    #[serde(deserialize_with = "int64")]
    create_revision: i64,
    #[serde(deserialize_with = "int64")]
    mod_revision: i64,
    #[serde(deserialize_with = "int64")]
    version: i64,
    #[serde(deserialize_with = "int64")]
    lease: i64,
}

impl WKv {
    fn into_typed(self) -> Kv {
        Kv {
            key: self.key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            version: self.version,
            lease: lease_of(self.lease),
        }
    }
}

fn kvs(v: Option<Vec<WKv>>) -> Vec<Kv> {
    v.unwrap_or_default().into_iter().map(WKv::into_typed).collect()
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WRange {
    header: Option<WHeader>,
    kvs: Option<Vec<WKv>>,
    #[serde(deserialize_with = "boolean")]
    more: bool,
    #[serde(deserialize_with = "int64")]
    count: i64,
}

impl WRange {
    fn into_typed(self, revision: i64) -> RangeResponse {
        RangeResponse { revision, kvs: kvs(self.kvs), more: self.more, count: self.count }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WPut {
    header: Option<WHeader>,
    prev_kv: Option<WKv>,
}

impl WPut {
    fn into_typed(self, revision: i64) -> PutResponse {
        PutResponse { revision, prev_kv: self.prev_kv.map(WKv::into_typed) }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WDelete {
    header: Option<WHeader>,
    #[serde(deserialize_with = "int64")]
    deleted: i64,
    prev_kvs: Option<Vec<WKv>>,
}

impl WDelete {
    fn into_typed(self, revision: i64) -> DeleteResponse {
        DeleteResponse { revision, deleted: self.deleted, prev_kvs: kvs(self.prev_kvs) }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WTxn {
    header: Option<WHeader>,
    #[serde(deserialize_with = "boolean")]
    succeeded: bool,
    responses: Option<Vec<WResponseOp>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WResponseOp {
    response_range: Option<WRange>,
    response_put: Option<WPut>,
    response_delete_range: Option<WDelete>,
}

impl WResponseOp {
    /// A nested answer's header carries only the revision: the txn's own is used when absent.
    fn into_typed(self, txn_revision: i64) -> Result<OpResponse, EtcdError> {
        let rev = |h: &Option<WHeader>| h.as_ref().map_or(txn_revision, |h| h.revision);
        match (self.response_range, self.response_put, self.response_delete_range) {
            (Some(r), None, None) => {
                let revision = rev(&r.header);
                Ok(OpResponse::Range(r.into_typed(revision)))
            }
            (None, Some(p), None) => {
                let revision = rev(&p.header);
                Ok(OpResponse::Put(p.into_typed(revision)))
            }
            (None, None, Some(d)) => {
                let revision = rev(&d.header);
                Ok(OpResponse::Delete(d.into_typed(revision)))
            }
            _ => Err(EtcdError::Decode("txn: an answer that is not exactly one of range, put, delete".into())),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WLeaseGrant {
    header: Option<WHeader>,
    #[serde(rename = "ID", deserialize_with = "int64")]
    id: i64,
    #[serde(rename = "TTL", deserialize_with = "int64")]
    ttl: i64,
    error: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WKeepAlive {
    header: Option<WHeader>,
    #[serde(rename = "TTL", deserialize_with = "int64")]
    ttl: i64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WHeaderOnly {
    header: Option<WHeader>,
}

/// A unary error body.
#[derive(Deserialize, Default)]
#[serde(default)]
struct WError {
    error: String,
    message: String,
    #[serde(deserialize_with = "int32")]
    code: i32,
}

/// A message of a streamed answer: a result or an error.
#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
struct WStream<T> {
    #[serde(default)]
    result: Option<T>,
    #[serde(default)]
    error: Option<WStreamError>,
}

impl<T> WStream<T> {
    fn into_result(self, what: &str) -> Result<T, EtcdError> {
        match (self.result, self.error) {
            (_, Some(e)) => {
                let code = match e.grpc_code {
                    0 => code_of_http(u16::try_from(e.http_code).unwrap_or(0)),
                    c => c,
                };
                Err(from_status(code, e.message))
            }
            (Some(r), None) => Ok(r),
            (None, None) => Err(EtcdError::Decode(format!("{what}: neither result nor error"))),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WStreamError {
    #[serde(deserialize_with = "int32")]
    grpc_code: i32,
    #[serde(deserialize_with = "int32")]
    http_code: i32,
    message: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WWatch {
    header: Option<WHeader>,
    #[serde(deserialize_with = "int64")]
    watch_id: i64,
    #[serde(deserialize_with = "boolean")]
    created: bool,
    #[serde(deserialize_with = "boolean")]
    canceled: bool,
    #[serde(deserialize_with = "int64")]
    compact_revision: i64,
    cancel_reason: String,
    events: Option<Vec<WEvent>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct WEvent {
    #[serde(rename = "type", deserialize_with = "event_kind")]
    kind: i32,
    kv: Option<WKv>,
    prev_kv: Option<WKv>,
}

impl WEvent {
    fn into_typed(self) -> Result<WatchEvent, EtcdError> {
        let kind = match self.kind {
            0 => EventKind::Put,
            1 => EventKind::Delete,
            k => return Err(EtcdError::Decode(format!("watch: unknown event type {k}"))),
        };
        let kv = self.kv.ok_or_else(|| EtcdError::Decode("watch: an event without kv".into()))?.into_typed();
        Ok(WatchEvent { kind, kv, prev_kv: self.prev_kv.map(WKv::into_typed) })
    }
}

// ---------------------------------------------------------------------------------------------
// proto3 JSON scalars: int64 as a string or a number, bytes as base64, null as the zero value.

/// Accepts a JSON string or integer (or null: 0) and checks it fits the target type.
struct IntVisitor<T>(std::marker::PhantomData<T>);

impl<T> Visitor<'_> for IntVisitor<T>
where
    T: TryFrom<i64> + TryFrom<u64> + std::str::FromStr + Default,
{
    type Value = T;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an integer, or an integer in a string")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("integer {v} out of range")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        T::try_from(v).map_err(|_| E::custom(format!("integer {v} out of range")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse::<T>().map_err(|_| E::custom(format!("not an integer: {:?}", clip(v))))
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }

    fn visit_none<E: de::Error>(self) -> Result<T, E> {
        Ok(T::default())
    }
}

fn int64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(IntVisitor::<i64>(std::marker::PhantomData))
}

fn int32<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    d.deserialize_any(IntVisitor::<i32>(std::marker::PhantomData))
}

/// A bool, or null (false).
fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(d)?.unwrap_or(false))
}

/// Base64 (standard alphabet, padding optional), or null (empty).
fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    match Option::<Cow<'de, str>>::deserialize(d)? {
        None => Ok(Vec::new()),
        Some(s) => B64.decode(s.as_bytes()).map_err(|e| de::Error::custom(format!("bad base64: {e}"))),
    }
}

/// An event type: a name (`"PUT"`, `"DELETE"`), a number, or null (PUT).
fn event_kind<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    struct KindVisitor;
    impl Visitor<'_> for KindVisitor {
        type Value = i32;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an event type")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i32, E> {
            match v {
                "PUT" => Ok(0),
                "DELETE" => Ok(1),
                _ => Err(E::custom(format!("unknown event type {:?}", clip(v)))),
            }
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i32, E> {
            i32::try_from(v).map_err(|_| E::custom("event type out of range"))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i32, E> {
            i32::try_from(v).map_err(|_| E::custom("event type out of range"))
        }
        fn visit_unit<E: de::Error>(self) -> Result<i32, E> {
            Ok(0)
        }
    }
    d.deserialize_any(KindVisitor)
}
